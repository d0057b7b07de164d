"""Encoding protocol messages (docs/protocol.md, version 1)."""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Sequence

__all__ = [
    "PROTOCOL_VERSION",
    "SITE_MAX_CHARS",
    "LABEL_MAX_CHARS",
    "dumps",
    "encode",
    "clip_end",
    "sanitize_name",
    "valid_name",
    "Envelope",
]

PROTOCOL_VERSION = 1
#: ``site`` is at most this many characters (the end of a long path is kept).
SITE_MAX_CHARS = 200
#: One stack entry is cut to this many characters (keeping its end).
FRAME_MAX_CHARS = 400
#: loopwatch cuts label values (task, exception, api, resource) to this.
LABEL_MAX_CHARS = 128
NAME_MAX_CHARS = 64

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:\-]")
_ELLIPSIS = "..."


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 text (not ``\\u`` escapes)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(text: str) -> bytes:
    # Lone surrogates (undecodable file names) become "?": loopwatch's JSON
    # parser would reject the whole message otherwise.
    return text.encode("utf-8", "replace")


def clip_end(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, keeping its end."""
    if len(text) <= limit:
        return text
    if limit <= len(_ELLIPSIS):
        return text[len(text) - limit :] if limit > 0 else ""
    return _ELLIPSIS + text[len(text) - (limit - len(_ELLIPSIS)) :]


def sanitize_name(name: object, fallback: str) -> str:
    """An ``app`` / ``loop`` / ``pool`` value: 1-64 of ``A-Z a-z 0-9 _ . : -``;
    other characters become ``_``."""
    text = _NAME_BAD.sub("_", str(name))[:NAME_MAX_CHARS]
    return text or fallback


def valid_name(text: str) -> bool:
    """True for 1-64 of ``A-Z a-z 0-9 _ . : -`` (a valid ``worker``)."""
    return 0 < len(text) <= NAME_MAX_CHARS and _NAME_BAD.search(text) is None


def label(text: object) -> str:
    return str(text)[:LABEL_MAX_CHARS]


def _num(x: float) -> str:
    return repr(float(x))


class Envelope:
    """The common fields of one reporter's messages, pre-encoded."""

    def __init__(self, app: str, loop: str, pid: int, worker: Optional[str] = None) -> None:
        self.app = app
        self.loop = loop
        self.pid = pid
        self.worker = worker
        self._common = '"app":%s,"loop":%s,"pid":%d' % (dumps(app), dumps(loop), pid)
        if worker is not None:
            self._common += ',"worker":%s' % dumps(worker)

    def prefix(self, kind: str) -> str:
        """``{"v":1,"type":KIND,"app":…,"loop":…,"pid":…`` (and ``"worker":…``
        when set; no closing brace)."""
        return '{"v":%d,"type":"%s",%s' % (PROTOCOL_VERSION, kind, self._common)

    def message(self, kind: str, fields: Dict[str, Any]) -> bytes:
        text = self.prefix(kind)
        if fields:
            text += "," + dumps(fields)[1:-1]
        return encode(text + "}")

    def stall(
        self,
        stall_id: int,
        blocked_s: float,
        site: str,
        stack: Sequence[str],
        max_size: int,
    ) -> bytes:
        """A ``stall`` message within ``max_size`` bytes: the outermost frames
        are dropped first, then the site is shortened (keeping its end)."""
        site = clip_end(site, SITE_MAX_CHARS)
        head = encode(
            '%s,"stall_id":%d,"blocked_s":%s,"site":'
            % (self.prefix("stall"), stall_id, _num(round(min(max(blocked_s, 0.0), 86400.0), 6)))
        )
        entries = [encode(dumps(clip_end(s, FRAME_MAX_CHARS))) for s in stack]
        site_b = encode(dumps(site))
        # head + site + ',"stack":[' + entries joined by ',' + ']}'
        fixed = len(head) + len(',"stack":[') + len("]}")
        budget = max_size - fixed - len(site_b)
        keep: List[bytes] = []
        used = 0
        for e in reversed(entries):  # innermost last in the message: keep those
            add = len(e) + (1 if keep else 0)
            if used + add > budget:
                break
            keep.append(e)
            used += add
        keep.reverse()
        if budget < 0:
            # Not even the site fits: shorten it, keeping its end.
            room = max_size - fixed
            chars = len(site)
            while chars > 0:
                chars = min(chars - 1, chars * room // max(1, len(site_b)))
                candidate = encode(dumps(clip_end(site, max(0, chars))))
                if len(candidate) <= room:
                    site_b = candidate
                    break
            else:
                site_b = b'""'
        return head + site_b + b',"stack":[' + b",".join(keep) + b"]}"
