"""Which line of a plugin's own code an error came from, as one line an author can act on.

An error raised in a worker reaches the manager either as a live exception whose `__cause__`
holds the worker's traceback text (executors.RemoteTraceback), or, for a failed start, as
that text alone. Either way the frames that matter to an author are the last ones inside the
plugin's code path (`<artifact>/src/...` or its source folder), not executors/ or importlib:

    TypeError: open() got an unexpected keyword argument 'x' (at mydb.py:12 in open)
"""

from __future__ import annotations

import re
import traceback
from types import TracebackType

__all__ = ["describe", "last_line", "plugin_frame"]

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)')


def _relative(filename: str, code_path: str) -> str | None:
    root = code_path.rstrip("/") + "/"
    if not filename.startswith(root):
        return None
    return filename[len(root):]


def plugin_frame(source: BaseException | TracebackType | str, code_path: str) -> str:
    """`file.py:line in fn` of the innermost frame inside code_path ("" if none): from a live
    exception (its own frames, else its RemoteTraceback text), a traceback, or a report text."""
    frames: list[tuple[str, int, str]] = []
    if isinstance(source, BaseException):
        if source.__traceback__ is not None:
            frames = [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_tb(source.__traceback__)]
        found = _pick(frames, code_path)
        if found:
            return found
        cause = source.__cause__
        if cause is not None and type(cause).__name__ == "RemoteTraceback":
            return plugin_frame(str(cause), code_path)
        return ""
    if isinstance(source, TracebackType):
        frames = [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_tb(source)]
    else:
        frames = [(m["file"], int(m["line"]), m["fn"]) for m in map(_FRAME.match, source.splitlines()) if m]
    return _pick(frames, code_path)


def _pick(frames: list[tuple[str, int, str]], code_path: str) -> str:
    for filename, line, fn in reversed(frames):
        rel = _relative(filename, code_path)
        if rel is not None:
            return f"{rel}:{line} in {fn}"
    return ""


def last_line(report: str) -> str:
    """The exception line of a traceback text (its last non-blank line)."""
    lines = [line.strip() for line in report.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe(exc: BaseException, code_path: str, shown: BaseException | None = None) -> str:
    """`Type: message (at file.py:line in fn)`: one line, the plugin's own frame if any.
    `shown`: what exc is translated to (a SandboxDenied), named at exc's frame."""
    text = str(shown or exc).strip().splitlines()
    message = f"{type(shown or exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    where = plugin_frame(exc, code_path)
    return f"{message} (at {where})" if where else message

