"""How far two generators' masks for the same image differ (the fast one against sam2's)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.core.matching import match


@dataclass
class Parity:
    """The difference between a reference's and a candidate's masks, over one or more images.

    ``mean_iou`` averages, over the reference's masks, the IoU with the candidate mask matched
    to it (one to one, best IoU first; an unmatched mask counts 0). Score differences are over
    matched pairs.
    """

    images: int = 0
    reference_masks: int = 0
    candidate_masks: int = 0
    iou_sum: float = 0.0
    count_mismatches: int = 0
    max_predicted_iou_diff: float = 0.0
    max_stability_diff: float = 0.0

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the reference's masks with their matches (1.0 when neither has any)."""
        if self.reference_masks == 0:
            return 1.0 if self.candidate_masks == 0 else 0.0
        return self.iou_sum / self.reference_masks

    def add(self, reference: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> None:
        """Add one image's two lists of mask records."""
        self.images += 1
        self.reference_masks += len(reference)
        self.candidate_masks += len(candidate)
        self.count_mismatches += int(len(reference) != len(candidate))
        for i, j, iou in match(reference, candidate):
            self.iou_sum += iou
            for key, field in (
                ("predicted_iou", "max_predicted_iou_diff"),
                ("stability_score", "max_stability_diff"),
            ):
                diff = abs(reference[i][key] - candidate[j][key])
                setattr(self, field, max(getattr(self, field), diff))

    def summary(self) -> dict[str, Any]:
        """Plain numbers for a report."""
        return {
            **asdict(self),
            "mean_iou": self.mean_iou,
            "count_mismatch_fraction": self.count_mismatches / max(self.images, 1),
        }
