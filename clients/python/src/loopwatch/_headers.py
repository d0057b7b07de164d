"""Reading rate-limit state from HTTP response headers."""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = ["RateLimit", "ratelimit_from_headers", "throttle_kind"]

# Values above this are unix timestamps, at or below it a number of seconds
# from now (1e9 seconds is about 31 years; 1e9 as a timestamp is 2001).
_EPOCH_THRESHOLD = 1e9

_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class RateLimit:
    """Rate-limit state of one API budget, as seen in a response.

    ``reset`` is the unix time (seconds, float) at which the window resets.
    """

    api: str
    resource: str
    limit: int
    remaining: int
    reset: float


def _lowered(headers: Any) -> Dict[str, str]:
    """Header names lower-cased; the first value of a repeated header wins."""
    items: Iterable[Tuple[Any, Any]]
    if hasattr(headers, "items"):
        items = headers.items()
    else:
        items = headers  # an iterable of (name, value) pairs, e.g. ASGI headers
    out: Dict[str, str] = {}
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).decode("latin-1")
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("latin-1")
        if not isinstance(name, str):
            continue
        if isinstance(value, (list, tuple)):  # some clients give lists of values
            if not value:
                continue
            value = value[0]
        if not isinstance(value, (str, int, float)):
            continue
        key = name.strip().lower()
        if key not in out:
            out[key] = str(value)
    return out


def _number(value: Optional[str]) -> Optional[float]:
    """The first number in a header value (``"100, 100;w=60"`` gives 100)."""
    if value is None:
        return None
    m = _NUMBER.match(value)
    if m is None:
        return None
    try:
        return float(m.group(1))
    except ValueError:  # pragma: no cover - the regex only matches numbers
        return None


def _count(value: Optional[str]) -> Optional[int]:
    n = _number(value)
    if n is None:
        return None
    return max(0, int(n))


def _retry_after(value: Optional[str], now: float) -> Optional[float]:
    """``Retry-After``: delay-seconds or an HTTP date, as a unix time."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    n = _number(value)
    if n is not None and _NUMBER.fullmatch(value):
        return now + max(0.0, n)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def _sf_params(member: str) -> Tuple[str, Dict[str, str]]:
    """Split a structured-field list member ``"name";k=v;k=v``."""
    parts = [p.strip() for p in member.split(";")]
    name = parts[0].strip().strip('"') if parts else ""
    params: Dict[str, str] = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            params[k.strip().lower()] = v.strip()
    return name, params


def _x_family(
    h: Dict[str, str], now: float
) -> Optional[Tuple[str, int, int, Optional[float]]]:
    """GitHub's ``X-RateLimit-*`` and the generic ``X-RateLimit-*`` /
    ``X-Rate-Limit-*`` headers."""
    for prefix in ("x-ratelimit-", "x-rate-limit-"):
        limit = _count(h.get(prefix + "limit"))
        remaining = _count(h.get(prefix + "remaining"))
        if limit is None or remaining is None:
            continue
        raw_reset = _number(h.get(prefix + "reset"))
        reset: Optional[float] = None
        if raw_reset is not None:
            reset = raw_reset if raw_reset > _EPOCH_THRESHOLD else now + max(0.0, raw_reset)
        else:
            after = _number(h.get(prefix + "reset-after"))
            if after is not None:
                reset = now + max(0.0, after)
        # GitHub names the budget; without the header it is GitHub's "core".
        resource = (h.get(prefix + "resource") or "").strip() or "core"
        return resource, limit, remaining, reset
    return None


def _ietf_family(
    h: Dict[str, str], now: float
) -> Optional[Tuple[str, int, int, Optional[float]]]:
    """The IETF draft headers: ``RateLimit-Limit/-Remaining/-Reset`` (reset
    in seconds from now), or the later ``RateLimit`` / ``RateLimit-Policy``
    structured fields (``"default";r=50;t=30`` and ``"default";q=100;w=60``)."""
    limit = _count(h.get("ratelimit-limit"))
    remaining = _count(h.get("ratelimit-remaining"))
    if limit is not None and remaining is not None:
        after = _number(h.get("ratelimit-reset"))
        reset = None if after is None else now + max(0.0, after)
        return "default", limit, remaining, reset
    combined = h.get("ratelimit")
    policy = h.get("ratelimit-policy")
    if combined is None or policy is None:
        return None
    name, params = _sf_params(combined.split(",")[0])
    remaining = _count(params.get("r"))
    if remaining is None:
        return None
    quota: Optional[int] = None
    for member in policy.split(","):
        pname, pparams = _sf_params(member)
        q = _count(pparams.get("q"))
        if q is None:
            continue
        if quota is None or pname == name:
            quota = q
        if pname == name:
            break
    if quota is None:
        return None
    t = _number(params.get("t"))
    reset = None if t is None else now + max(0.0, t)
    return (name or "default"), quota, remaining, reset


def ratelimit_from_headers(api: str, headers: Any) -> Optional[RateLimit]:
    """Read the rate-limit state an API announced in its response headers.

    ``headers`` is any ``Mapping[str, str]`` or object with ``.items()``
    (``http.client.HTTPMessage``, aiohttp's and httpx's header objects,
    requests' ``CaseInsensitiveDict``) or an iterable of ``(name, value)``
    pairs (str or bytes). Names are case-insensitive.

    Understood, in this order:

    * GitHub and generic ``X-RateLimit-Limit/-Remaining/-Reset`` (also
      ``X-Rate-Limit-*``): a reset above 1e9 is a unix time, otherwise
      seconds from now; the budget is ``X-RateLimit-Resource``, ``core`` when
      absent (GitHub's default budget).
    * the IETF draft ``RateLimit-Limit/-Remaining/-Reset`` (reset in seconds
      from now), budget ``default``; and the later draft's ``RateLimit`` +
      ``RateLimit-Policy`` structured fields, budget = the policy name.
    * ``Retry-After`` (seconds or an HTTP date) gives the reset when no
      more requests remain (``remaining == 0``).

    Returns None when the headers carry no usable limit, remaining count and
    reset time. Never raises.
    """
    try:
        h = _lowered(headers)
    except Exception:
        return None
    now = time.time()
    try:
        found = _x_family(h, now) or _ietf_family(h, now)
        if found is None:
            return None
        resource, limit, remaining, reset = found
        if remaining == 0:
            after = _retry_after(h.get("retry-after"), now)
            if after is not None:
                reset = after
        if reset is None:
            return None
        return RateLimit(
            api=str(api), resource=resource, limit=limit, remaining=remaining, reset=float(reset)
        )
    except Exception:
        return None


def throttle_kind(
    status: Optional[int], headers: Any = None, body: Any = None
) -> Optional[str]:
    """Whether a response is a rate-limit refusal: ``"primary"`` (the budget
    is spent: 403/429 with no requests remaining), ``"secondary"`` (GitHub's
    secondary limits: 403/429 with ``Retry-After`` or a "secondary rate
    limit" message; any other 429), or None. ``body`` may be text, bytes or
    a decoded JSON object. Never raises."""
    try:
        if status not in (403, 429):
            return None
        h = _lowered(headers) if headers is not None else {}
        now = time.time()
        found = _x_family(h, now) or _ietf_family(h, now)
        if found is not None and found[2] == 0:
            return "primary"
        if isinstance(body, (bytes, bytearray)):
            body = bytes(body[:4096]).decode("utf-8", "replace")
        if isinstance(body, dict):
            body = body.get("message", "")
        text = body if isinstance(body, str) else ""
        if "secondary rate limit" in text.lower() or "retry-after" in h or status == 429:
            return "secondary"
        return None
    except Exception:
        return None


def resource_from_headers(headers: Any) -> str:
    """The budget a response names (``X-RateLimit-Resource``), else ``default``."""
    try:
        value = _lowered(headers).get("x-ratelimit-resource", "").strip()
    except Exception:
        return "default"
    return value or "default"
