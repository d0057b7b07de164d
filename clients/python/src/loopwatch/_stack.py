"""The loop thread's stack, and the blocking site in it."""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
from types import FrameType
from typing import Dict, List, Optional, Tuple

__all__ = ["Frame", "capture", "find_site", "format_frame", "is_library"]

#: (path, line, function)
Frame = Tuple[str, int, str]

#: Frames beyond this depth (counted from the innermost) are not read.
MAX_FRAMES = 2000


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _dirs(*names: str) -> List[str]:
    paths = sysconfig.get_paths()
    out = []
    for n in names:
        p = paths.get(n)
        if p:
            d = _norm(p)
            if d not in out:
                out.append(d)
    return out


_STDLIB = _dirs("stdlib", "platstdlib")
# Third-party code lives inside the stdlib directory on many installs
# (lib/python3.X/site-packages): it is application code for the site rule.
_THIRD_PARTY = _dirs("purelib", "platlib")
_THIRD_PARTY_NAMES = ("site-packages", "dist-packages")
_OWN = _norm(os.path.dirname(os.path.abspath(__file__)))

_cache: Dict[str, bool] = {}
_cache_lock = threading.Lock()


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _classify(filename: str) -> bool:
    if filename.startswith("<"):
        # "<frozen importlib._bootstrap>" is the standard library; "<string>",
        # "<stdin>", "<console>" are code the application ran.
        return filename.startswith("<frozen ")
    try:
        path = _norm(filename)
    except (OSError, ValueError):
        return False
    if _under(path, _OWN):
        return True
    parts = path.split(os.sep)
    if any(n in parts for n in _THIRD_PARTY_NAMES):
        return False
    if any(_under(path, d) for d in _THIRD_PARTY):
        return False
    return any(_under(path, d) for d in _STDLIB)


def is_library(filename: str) -> bool:
    """True for the standard library and loopwatch itself (not site-packages)."""
    known = _cache.get(filename)
    if known is not None:
        return known
    result = _classify(filename)
    with _cache_lock:
        if len(_cache) > 10000:
            _cache.clear()
        _cache[filename] = result
    return result


def capture(thread_id: int) -> Optional[List[Frame]]:
    """The thread's current stack, outermost first (None if it is gone).

    Called from the watchdog thread. The equivalent of
    ``traceback.extract_stack(sys._current_frames()[thread_id])`` without
    reading source lines.
    """
    frame: Optional[FrameType] = sys._current_frames().get(thread_id)
    if frame is None:
        return None
    frames: List[Frame] = []
    try:
        while frame is not None and len(frames) < MAX_FRAMES:
            code = frame.f_code
            frames.append((code.co_filename, frame.f_lineno or 0, code.co_name))
            frame = frame.f_back
    finally:
        del frame
    frames.reverse()
    return frames


def format_frame(frame: Frame) -> str:
    return f"{frame[0]}:{frame[1]} {frame[2]}"


def find_site(frames: List[Frame]) -> str:
    """The innermost frame outside the standard library and loopwatch, as
    ``path:line function``; ``unknown`` when there is none."""
    for frame in reversed(frames):
        if not is_library(frame[0]):
            return format_frame(frame)
    return "unknown"
