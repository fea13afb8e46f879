"""A run's Parquet read by the tools users already have (issue 22): pyarrow.dataset, DuckDB and
Polars read ``OUT/masks`` and ``OUT/images`` as they are and hand back RLEs that pycocotools
decodes to the same masks; with the README's ``*.parquet`` globs they also read a run whose
killed writer left a half-written ``_….partial`` file. Hugging Face ``datasets`` and Ray Data
are heavier: the README shows them."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import polars
import pyarrow.dataset as ds
import pytest
from pycocotools import mask as mask_utils

from benchmarks.synthetic_run import write_synthetic_run

IMAGES, MASKS_PER_IMAGE = 5, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run of three shards."""
    out = tmp_path_factory.mktemp("readers") / "run"
    write_synthetic_run(str(out), images=IMAGES, masks_per_image=MASKS_PER_IMAGE, shard_size=2)
    return out


@pytest.fixture()
def interrupted(run, tmp_path) -> Path:
    """The same run after a writer was killed in the middle of a fourth shard's file."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "masks" / "_3f2a.shard-00003.parquet.partial").write_bytes(b"PAR1 half a file")
    return copy


def by_key(rows: list[dict]) -> dict[tuple[int, int], dict]:
    return {(row["image_id"], row["mask_index"]): row for row in rows}


def pyarrow_rows(run: Path) -> dict[tuple[int, int], dict]:
    return by_key(ds.dataset(run / "masks", format="parquet").to_table().to_pylist())


def same_masks(rows: dict[tuple[int, int], dict], reference: dict[tuple[int, int], dict]) -> None:
    """Every mask of ``reference`` is in ``rows`` and decodes to the same pixels."""
    assert rows.keys() == reference.keys()
    for key, row in rows.items():
        segmentation = {"size": list(row["segmentation"]["size"])}
        segmentation["counts"] = row["segmentation"]["counts"]
        decoded = mask_utils.decode(segmentation)
        assert decoded.sum() == row["area"] == reference[key]["area"] > 0
        assert np.array_equal(decoded, mask_utils.decode(reference[key]["segmentation"]))


def test_pyarrow_dataset_reads_the_folders(run):
    masks = ds.dataset(run / "masks", format="parquet")
    images = ds.dataset(run / "images", format="parquet").to_table()
    assert images.num_rows == IMAGES
    assert set(images.column("status").to_pylist()) == {"ok"}
    assert masks.count_rows() == sum(images.column("num_masks").to_pylist()) >= IMAGES


def test_duckdb_reads_the_folders(run):
    connection = duckdb.connect()
    query = f"SELECT * FROM read_parquet('{run}/masks/*.parquet')"
    cursor = connection.execute(query)
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    same_masks(by_key(rows), pyarrow_rows(run))
    per_image = connection.execute(
        f"SELECT i.image_uri, i.num_masks, count(m.mask_index) AS n "
        f"FROM read_parquet('{run}/images/*.parquet') i "
        f"JOIN read_parquet('{run}/masks/*.parquet') m USING (image_id) "
        f"GROUP BY i.image_uri, i.num_masks"
    ).fetchall()
    assert len(per_image) == IMAGES
    assert all(num_masks == n > 0 for _, num_masks, n in per_image)


def test_polars_reads_the_folders(run):
    for source in (run / "masks", f"{run}/masks/*.parquet"):
        frame = polars.read_parquet(source)
        same_masks(by_key(frame.to_dicts()), pyarrow_rows(run))
    images = polars.scan_parquet(run / "images").collect()
    assert images.height == IMAGES
    assert images.get_column("num_masks").sum() == len(pyarrow_rows(run))


def test_the_readme_globs_skip_a_killed_writers_leftover(interrupted, run):
    reference = pyarrow_rows(run)
    assert pyarrow_rows(interrupted) == reference  # pyarrow skips "_" names in a folder
    glob = f"{interrupted}/masks/*.parquet"
    rows = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()
    assert rows == (len(reference),)
    same_masks(by_key(polars.read_parquet(glob).to_dicts()), reference)
