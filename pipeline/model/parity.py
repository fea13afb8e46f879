"""How far two generators' masks for the same image differ (the fast one against sam2's)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.core import rle


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


def match(
    reference: list[dict[str, Any]], candidate: list[dict[str, Any]]
) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(reference index, candidate index, IoU)``: identical masks first,
    then the rest by best IoU."""
    pairs = identical(reference, candidate)
    ref_left = sorted(set(range(len(reference))) - {i for i, _, _ in pairs})
    cand_left = sorted(set(range(len(candidate))) - {j for _, j, _ in pairs})
    if not ref_left or not cand_left:
        return pairs
    ious = mask_utils.iou(
        [rle.as_pycocotools(candidate[j]["segmentation"]) for j in cand_left],
        [rle.as_pycocotools(reference[i]["segmentation"]) for i in ref_left],
        [0] * len(ref_left),
    ).T  # (reference, candidate)
    for a, b in mutual_best(ious):
        pairs.append((ref_left[a], cand_left[b], float(ious[a, b])))
    return pairs


def mutual_best(ious: np.ndarray) -> list[tuple[int, int]]:
    """Greedy one-to-one matching on an IoU matrix: pairs that are each other's best match,
    then again among the rest, until no pair with IoU > 0 is left."""
    ious = ious.copy()
    pairs = []
    while ious.size and ious.max() > 0:
        best_cand = ious.argmax(axis=1)
        best_ref = ious.argmax(axis=0)
        rows = np.arange(len(ious))
        mutual = (best_ref[best_cand] == rows) & (ious[rows, best_cand] > 0)
        for a in rows[mutual]:
            b = best_cand[a]
            pairs.append((int(a), int(b)))
            ious[a, :] = 0
            ious[:, b] = 0
    return pairs


def identical(
    reference: list[dict[str, Any]], candidate: list[dict[str, Any]]
) -> list[tuple[int, int, float]]:
    """Pairs of byte-identical masks (IoU 1), each mask used once."""
    by_counts: dict[str, list[int]] = {}
    for j, record in enumerate(candidate):
        by_counts.setdefault(record["segmentation"]["counts"], []).append(j)
    pairs = []
    for i, record in enumerate(reference):
        same = by_counts.get(record["segmentation"]["counts"])
        if same:
            pairs.append((i, same.pop(0), 1.0))
    return pairs
