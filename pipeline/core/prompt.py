"""A prompt: a box and/or clicks on one image, and where it came from (shared by the job,
which reads prompts files, and the model, which decodes them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """One object to segment: a box and/or clicks, and where it came from.

    Attributes:
        box: (x, y, w, h) in image pixels, or in fractions of the image when ``normalized``.
        points: ((x, y), …) clicks, same units as the box.
        point_labels: 1 (on the object) or 0 (not on it), one per point.
        normalized: coordinates are fractions of the image's width and height (YOLO).
        category_id, category_name, source_id, score: carried to the mask row unchanged.
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    normalized: bool = False
    category_id: int | None = None
    category_name: str | None = None
    source_id: str | None = None
    score: float | None = None

    def non_finite(self) -> str | None:
        """What is wrong when a coordinate is NaN or infinite (such a prompt points nowhere),
        e.g. ``box [nan, 10.0, 20.0, 20.0]``; None when every coordinate is a number."""
        if self.box is not None and not all(math.isfinite(v) for v in self.box):
            return f"box {list(self.box)}"
        if not all(math.isfinite(v) for point in self.points for v in point):
            return f"points {[list(p) for p in self.points]}"
        return None

    def in_pixels(self, width: int, height: int) -> Prompt:
        """The prompt in pixels of a ``width`` × ``height`` image."""
        if not self.normalized:
            return self
        box = None
        if self.box is not None:
            x, y, w, h = self.box
            box = (x * width, y * height, w * width, h * height)
        points = tuple((x * width, y * height) for x, y in self.points)
        return Prompt(box, points, self.point_labels, False, *self.source_fields())

    def scaled(self, factor_x: float, factor_y: float) -> Prompt:
        """The pixel prompt on the image resized by these factors (``image.max_short_side``)."""
        box = None
        if self.box is not None:
            x, y, w, h = self.box
            box = (x * factor_x, y * factor_y, w * factor_x, h * factor_y)
        points = tuple((x * factor_x, y * factor_y) for x, y in self.points)
        return Prompt(box, points, self.point_labels, self.normalized, *self.source_fields())

    def columns(self) -> dict[str, Any]:
        """The prompt's columns of a mask row (``pipeline.core.schema``)."""
        return {
            "prompt_box": list(self.box) if self.box is not None else None,
            "prompt_points": [list(p) for p in self.points] or None,
            "prompt_labels": list(self.point_labels) or None,
            "category_id": self.category_id,
            "category_name": self.category_name,
            "source_id": self.source_id,
            "source_score": self.score,
        }

    def record(self) -> dict[str, Any]:
        """The prompt as plain values (a row of the run's prompt blocks); ``from_record``
        gives it back."""
        return {
            "box": list(self.box) if self.box is not None else None,
            "points": [list(p) for p in self.points],
            "point_labels": list(self.point_labels),
            "normalized": self.normalized,
            "category_id": self.category_id,
            "category_name": self.category_name,
            "source_id": self.source_id,
            "score": self.score,
        }

    @classmethod
    def from_record(cls, row: dict[str, Any]) -> Prompt:
        """The prompt of a ``record`` (extra keys of the row are ignored)."""
        return cls(
            tuple(row["box"]) if row["box"] is not None else None,
            tuple(tuple(p) for p in row["points"] or ()),
            tuple(row["point_labels"] or ()),
            bool(row["normalized"]),
            row["category_id"],
            row["category_name"],
            row["source_id"],
            row["score"],
        )

    def source_fields(self) -> tuple[Any, ...]:
        """``category_id, category_name, source_id, score``."""
        return (self.category_id, self.category_name, self.source_id, self.score)
