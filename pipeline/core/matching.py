"""One-to-one matching of two lists of mask records of the same image (identical masks first,
then mutual best IoU): what the parity checks and ``autolabel compare`` count agreement with."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.core import rle


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
