"""Named counters: DOC_COUNTER.incr / value / reset / names."""

from __future__ import annotations

from vsm.sdk import KeyNotFoundError


class Counters:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def incr(self, name: str, by: int = 1) -> int:
        if not isinstance(name, str) or not isinstance(by, int):
            raise TypeError("incr(name: str, by: int)")
        self._counts[name] = self._counts.get(name, 0) + by
        return self._counts[name]

    def value(self, name: str) -> int:
        if name not in self._counts:
            raise KeyNotFoundError(f"no counter {name!r}")
        return self._counts[name]

    def reset(self, name: str) -> bool:
        return self._counts.pop(name, None) is not None

    def names(self) -> list[str]:
        return sorted(self._counts)


def serve() -> tuple[str, Counters]:
    return "DOC_COUNTER", Counters()
