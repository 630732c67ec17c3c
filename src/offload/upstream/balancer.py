"""Load-balancing choices, as pure classes: given the servers, decide the order to try them."""

from __future__ import annotations


class RoundRobin:
    """Each call starts one server further along; the others follow as fallbacks in order."""

    __slots__ = ("_count", "_next")

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("a backend needs at least one server")
        self._count = count
        self._next = 0

    def order(self) -> list[int]:
        """Indices of the servers to try, first choice first."""
        start = self._next
        self._next = (start + 1) % self._count
        return [*range(start, self._count), *range(start)]
