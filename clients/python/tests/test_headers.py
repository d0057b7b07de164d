"""ratelimit_from_headers() for each header style, and reporting it."""

from __future__ import annotations

import asyncio
import email.message
import email.utils
import time
from typing import Dict

import pytest

import loopwatch
from loopwatch import RateLimit, ratelimit_from_headers
from conftest import UdpReceiver


def test_github() -> None:
    rl = ratelimit_from_headers(
        "github",
        {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "4987",
            "x-ratelimit-reset": "1795440000",
            "x-ratelimit-used": "13",
            "x-ratelimit-resource": "search",
        },
    )
    assert rl == RateLimit("github", "search", 5000, 4987, 1795440000.0)
    assert isinstance(rl.reset, float)


def test_github_without_resource_is_core() -> None:
    rl = ratelimit_from_headers(
        "github",
        {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "59", "X-RateLimit-Reset": "1795440000"},
    )
    assert rl == RateLimit("github", "core", 60, 59, 1795440000.0)


def test_generic_x_ratelimit_reset_in_seconds_from_now() -> None:
    before = time.time()
    rl = ratelimit_from_headers(
        "stripe", {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "30"}
    )
    assert rl is not None
    assert (rl.limit, rl.remaining) == (100, 7)
    assert before + 30 <= rl.reset <= time.time() + 30


def test_generic_x_ratelimit_reset_epoch_with_fraction() -> None:
    rl = ratelimit_from_headers(
        "discord", {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "1795440000.25"}
    )
    assert rl is not None and rl.reset == 1795440000.25


def test_x_rate_limit_with_dashes() -> None:
    rl = ratelimit_from_headers(
        "twitter", {"x-rate-limit-limit": "900", "x-rate-limit-remaining": "899", "x-rate-limit-reset": "1795440000"}
    )
    assert rl == RateLimit("twitter", "core", 900, 899, 1795440000.0)


def test_ietf_draft_reset_is_seconds_from_now() -> None:
    before = time.time()
    rl = ratelimit_from_headers(
        "api", {"RateLimit-Limit": "100", "RateLimit-Remaining": "42", "RateLimit-Reset": "60"}
    )
    assert rl is not None
    assert (rl.api, rl.resource, rl.limit, rl.remaining) == ("api", "default", 100, 42)
    assert before + 60 <= rl.reset <= time.time() + 60


def test_ietf_draft_limit_with_policy() -> None:
    rl = ratelimit_from_headers(
        "api", {"RateLimit-Limit": "100, 100;w=60", "RateLimit-Remaining": "3", "RateLimit-Reset": "5"}
    )
    assert rl is not None and rl.limit == 100 and rl.remaining == 3


def test_ietf_structured_fields() -> None:
    before = time.time()
    rl = ratelimit_from_headers(
        "api",
        {"RateLimit-Policy": '"burst";q=10;w=1, "daily";q=1000;w=86400', "RateLimit": '"daily";r=250;t=3600'},
    )
    assert rl is not None
    assert (rl.resource, rl.limit, rl.remaining) == ("daily", 1000, 250)
    assert before + 3600 <= rl.reset <= time.time() + 3600


def test_retry_after_seconds_when_exhausted() -> None:
    before = time.time()
    rl = ratelimit_from_headers(
        "api",
        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1795440000", "Retry-After": "120"},
    )
    assert rl is not None and rl.remaining == 0
    assert before + 120 <= rl.reset <= time.time() + 120


def test_retry_after_http_date_when_exhausted() -> None:
    when = int(time.time()) + 300
    rl = ratelimit_from_headers(
        "api",
        {
            "RateLimit-Limit": "10",
            "RateLimit-Remaining": "0",
            "Retry-After": email.utils.formatdate(when, usegmt=True),
        },
    )
    assert rl is not None and rl.reset == float(when)


def test_retry_after_ignored_while_requests_remain() -> None:
    rl = ratelimit_from_headers(
        "api",
        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "1795440000", "Retry-After": "120"},
    )
    assert rl is not None and rl.reset == 1795440000.0


def test_case_insensitive_and_other_header_objects() -> None:
    msg = email.message.Message()  # http.client.HTTPMessage is one of these
    msg["X-RATELIMIT-LIMIT"] = "10"
    msg["x-RateLimit-Remaining"] = "9"
    msg["X-Ratelimit-Reset"] = "1795440000"
    assert ratelimit_from_headers("a", msg) == RateLimit("a", "core", 10, 9, 1795440000.0)
    raw = [(b"x-ratelimit-limit", b"10"), (b"x-ratelimit-remaining", b"8"), (b"x-ratelimit-reset", b"1795440000")]
    assert ratelimit_from_headers("a", raw) == RateLimit("a", "core", 10, 8, 1795440000.0)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        {"X-RateLimit-Limit": "100"},  # no remaining
        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "5"},  # no reset
        {"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "1"},
        {"Retry-After": "120"},  # throttled, but no limit to report
        {"RateLimit": '"x";r=1;t=1'},  # no policy: no limit
    ],
)
def test_nothing_usable_is_none(headers: Dict[str, str]) -> None:
    assert ratelimit_from_headers("api", headers) is None


def test_garbage_never_raises() -> None:
    assert ratelimit_from_headers("api", None) is None
    assert ratelimit_from_headers("api", 42) is None
    assert ratelimit_from_headers("api", [("only-one",)]) is None


def test_report_headers_sends_ratelimit(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target)
        rl = r.report_headers(
            "github",
            {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "12", "X-RateLimit-Reset": "1795440000"},
        )
        assert rl == RateLimit("github", "core", 5000, 12, 1795440000.0)
        assert r.report_headers("github", {}) is None
        r.ratelimit("openai", "tokens", limit=90000, remaining=100, reset=1795440001.5)
        await udp.wait(lambda m: len(udp.of_type("ratelimit")) == 2)
        r.stop()

    loop.run_until_complete(body())
    first, second = udp.of_type("ratelimit")
    assert {k: first[k] for k in ("v", "app", "loop", "api", "resource", "limit", "remaining", "reset")} == {
        "v": 1,
        "app": "api",
        "loop": "main",
        "api": "github",
        "resource": "core",
        "limit": 5000,
        "remaining": 12,
        "reset": 1795440000.0,
    }
    assert (second["api"], second["resource"], second["reset"]) == ("openai", "tokens", 1795440001.5)


def test_pool_message(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target)
        r.pool("db", size=10, max=10, in_use=10, waiting=4)
        r.pool("bad pool/name", size=1, max=2, in_use=0, waiting=0)
        r.pool("db", size="x", max=1, in_use=0, waiting=0)  # type: ignore[arg-type]  # dropped, no raise
        await udp.wait(lambda m: len(udp.of_type("pool")) == 2)
        r.stop()

    loop.run_until_complete(body())
    a, b = udp.of_type("pool")
    assert {k: a[k] for k in ("type", "pool", "size", "max", "in_use", "waiting")} == {
        "type": "pool",
        "pool": "db",
        "size": 10,
        "max": 10,
        "in_use": 10,
        "waiting": 4,
    }
    assert b["pool"] == "bad_pool_name"
    assert len(udp.of_type("pool")) == 2


def test_throttle_kind_reads_github_and_generic_refusals() -> None:
    from loopwatch import throttle_kind

    spent = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1795440000"}
    assert throttle_kind(403, spent) == "primary"
    assert throttle_kind(429, {"RateLimit-Limit": "10", "RateLimit-Remaining": "0", "RateLimit-Reset": "5"}) == "primary"
    body = b'{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}'
    assert throttle_kind(403, {}, body) == "secondary"
    assert throttle_kind(403, {"Retry-After": "60"}) == "secondary"
    assert throttle_kind(429, {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "5"}) == "secondary"
    assert throttle_kind(403, {}, {"message": "Resource not accessible by integration"}) is None
    assert throttle_kind(200, spent) is None
    assert throttle_kind(None) is None
    assert throttle_kind(403, 42, object()) is None


def test_report_headers_counts_refusals(loop: asyncio.AbstractEventLoop, udp: UdpReceiver) -> None:
    async def body() -> None:
        r = loopwatch.start("api", target=udp.target)
        spent = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1795440000"}
        rl = r.report_headers("github", spent, status=403, token="ci-bot")
        assert rl is not None and rl.remaining == 0
        secondary = b'{"message":"You have exceeded a secondary rate limit."}'
        assert r.report_headers("github", {"Retry-After": "60"}, status=403, body=secondary) is None
        assert r.report_headers("github", {}, status=404) is None  # not a refusal: nothing sent
        r.ratelimit("x", "y", limit=1, remaining=1, reset=1.0, throttled="tertiary")  # dropped, no raise
        await udp.wait(lambda m: len(udp.of_type("ratelimit")) == 2)
        r.stop()

    loop.run_until_complete(body())
    first, second = udp.of_type("ratelimit")
    assert (first["token"], first["throttled"], first["remaining"]) == ("ci-bot", "primary", 0)
    assert second["throttled"] == "secondary" and "limit" not in second and "token" not in second
