"""Plot held-out prompted vs other IoU (and the share the default thresholds keep) per step.

Usage: python training/plot_curves.py OUT.png RUN_FOLDER [RUN_FOLDER ...]; each folder holds a
training run's metrics.jsonl (training.train writes it). The first run is drawn bold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def held_out(folder: Path) -> tuple[list[int], dict[str, list[float]]]:
    """Steps with a held-out measurement, and each measure's values at those steps."""
    steps, values = [], {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "held_out" in record:
            steps.append(record["step"])
            for name, value in record["held_out"].items():
                values.setdefault(name, []).append(value)
    return steps, values


def main(out: str, folders: list[str]) -> None:
    """Draw the curves of ``folders`` into ``out``."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for index, folder in enumerate(folders):
        steps, values = held_out(Path(folder))
        width, name = (2.2, Path(folder).name) if index == 0 else (1.0, Path(folder).name)
        line = left.plot(steps, values["prompted"], lw=width, label=f"{name}: prompted")[0]
        left.plot(
            steps,
            values["other"],
            lw=width,
            ls="--",
            color=line.get_color(),
            label=f"{name}: other",
        )
        right.plot(steps, values["kept_good"], lw=width, color=line.get_color(), label=name)
    left.set(
        xlabel="step",
        ylabel="held-out IoU",
        ylim=(0, 1),
        title="IoU of the chosen mask with the clicked object vs another",
    )
    right.set(
        xlabel="step",
        ylabel="share of clicks",
        ylim=(0, 1),
        title="masks passing the default thresholds (and IoU ≥ 0.5)",
    )
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
