"""The README's first figure: `make demo`'s automatic run, each scene's masks over it.

    make demo
    .venv/bin/python docs/demo_figure.py demo-output

Writes ``docs/demo_overlays.png``: the first eight scenes of the run (by file name), each mask
drawn as ``autolabel show`` draws it, with the scene's mask count under it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docs.figures import caption, contact_sheet, first_scenes, overlay_tile  # noqa: E402


def main(run_path: str, count: int = 8) -> None:
    """Draw ``count`` scenes of the run at ``run_path`` into the figure."""
    tiles = []
    for image, masks in first_scenes(run_path, int(count)):
        tile, _ = overlay_tile(image, masks)
        caption(tile, f"{len(masks)} masks")
        tiles.append(tile)
    out = ROOT / "docs" / "demo_overlays.png"
    contact_sheet(tiles).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
