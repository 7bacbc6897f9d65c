"""Tiles: the rectangles of scan positions the engine works on, one task each."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tile"]


@dataclass(frozen=True)
class Tile:
    """A rectangle of scan positions ``[x0:x1, y0:y1]``."""

    x0: int
    x1: int
    y0: int
    y1: int

    @property
    def n(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.x0, self.x1), slice(self.y0, self.y1)
