"""One container for per-mask data, on the device or the host: ``MaskData``.

Each column holds one value per mask: a tensor, a NumPy array or a list (masks of different
crops have different sizes, so they travel as a list). ``filter`` and ``cat`` keep every column
aligned, as sam2's own ``MaskData`` does; ``to_host`` moves the tensors to NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Column = torch.Tensor | np.ndarray | list


class MaskData:
    """Columns of per-mask values, all of one length.

    Args:
        columns: name → tensor, array or list, each with one entry per mask.

    Raises:
        ValueError: the columns' lengths differ.
    """

    def __init__(self, **columns: Column) -> None:
        lengths = {name: len(value) for name, value in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"mask columns of different lengths: {lengths}")
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def filter(self, keep: torch.Tensor | np.ndarray) -> MaskData:
        """The masks at ``keep`` (indices, in that order, or a boolean per mask).

        Args:
            keep: a tensor or array of indices or booleans.
        """
        if isinstance(keep, torch.Tensor):
            keep = keep.cpu()
        indices = np.asarray(keep)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        return MaskData(**{name: take(value, indices) for name, value in self.columns.items()})

    @staticmethod
    def cat(parts: list[MaskData]) -> MaskData:
        """The masks of ``parts`` one after another (all with the same columns).

        Args:
            parts: at least one ``MaskData``.
        """
        names = parts[0].columns
        joined = {}
        for name in names:
            values = [part.columns[name] for part in parts]
            if isinstance(values[0], torch.Tensor):
                joined[name] = torch.cat(values)
            elif isinstance(values[0], np.ndarray):
                joined[name] = np.concatenate(values)
            else:
                joined[name] = [item for value in values for item in value]
        return MaskData(**joined)

    def to_host(self, *names: str) -> MaskData:
        """The columns ``names`` (default: all) with tensors moved to NumPy arrays."""
        chosen = names or tuple(self.columns)
        return MaskData(
            **{
                name: self.columns[name].cpu().numpy()
                if isinstance(self.columns[name], torch.Tensor)
                else self.columns[name]
                for name in chosen
            }
        )

    def with_columns(self, **columns: Column) -> MaskData:
        """A copy with ``columns`` added or replaced."""
        return MaskData(**{**self.columns, **columns})


def take(value: Column, indices: np.ndarray) -> Column:
    """``value``'s entries at ``indices``, of the same kind as ``value``."""
    if isinstance(value, torch.Tensor):
        return value[torch.as_tensor(indices, dtype=torch.long, device=value.device)]
    if isinstance(value, np.ndarray):
        return value[indices]
    return [value[i] for i in indices.tolist()]
