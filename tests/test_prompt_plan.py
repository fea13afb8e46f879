"""Prompts planned like the listing: streamed, spilled per listing block, matched block by
block, never held whole; the result must not depend on how they were cut up."""

import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout
from pipeline.job import prompt_plan
from pipeline.job.listing import listing_shards, new_listing, read_shard_prompts, read_shard_uris
from pipeline.job.prompt_plan import install_prompt_blocks, plan_prompts
from pipeline.job.prompts import PromptsError
from pipeline.job.sources import ImageRef, image_id_for, sorted_listing
from tests.conftest import read_prompts


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    """The scratch folders' parent, to see that none is left behind."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(prompt_plan.tempfile, "tempdir", str(folder))
    return folder


def uris(count):
    return [f"/data/img/{k:05d}.png" for k in range(count)]


def table_rows(listed, unlisted, count, seed=0):
    """``count`` prompt rows over the listed URIs and a few unlisted ones, in random order;
    scores are whole numbers (an int column), as some detectors write them."""
    rng = random.Random(seed)
    rows = []
    for k in range(count):
        uri = rng.choice(unlisted) if k % 50 == 0 else rng.choice(listed)
        box = [float(rng.randint(0, 50)), float(rng.randint(0, 50)), 8.0, 9.0]
        rows.append(
            {
                "image_uri": uri,
                "box": box,
                "category_id": k % 7,
                "source_id": str(k),
                "score": k % 2,
            }
        )
    return rows


def expected_prompts(rows, listed):
    """Each listed image's prompts in the file's order, straight from the rows."""
    wanted = set(listed)
    by_uri = {}
    for row in rows:
        if row["image_uri"] in wanted:
            prompt = Prompt(
                box=tuple(row["box"]),
                category_id=row["category_id"],
                source_id=row["source_id"],
                score=row["score"],
            )
            by_uri.setdefault(row["image_uri"], []).append(prompt)
    return by_uri


def old_hash(expected, listed):
    """The prompts' hash as runs planned before prompts streamed have it in their manifest:
    sha256 over each sorted image and the ``repr`` of its prompts as read."""
    digest = hashlib.sha256()
    for uri in sorted(listed):
        digest.update(f"{uri}\n{tuple(expected.get(uri, ()))!r}\n".encode())
    return digest.hexdigest()[:16]


def test_a_table_cut_into_spills_and_blocks_gives_every_prompt_to_its_image_in_order(
    tmp_path, scratch, monkeypatch
):
    listed = uris(300)
    rows = table_rows(listed, ["/data/img/zz-missing.png", "/other/a.png"], 1000)
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=128)
    refs = [ImageRef(image_id_for(uri), uri) for uri in reversed(listed)]

    whole = read_prompts(Location(str(path)), refs, shard_size=1000)  # one block, one spill
    monkeypatch.setattr(prompt_plan, "SPILL_ROWS", 37)
    cut = read_prompts(Location(str(path)), refs, shard_size=2)  # 3 blocks, 28 spills

    expected = expected_prompts(rows, listed)
    assert cut.by_uri == expected and whole.by_uri == expected
    assert cut.unmatched == whole.unmatched == sum(r["image_uri"] not in listed for r in rows)
    assert set(cut.unmatched_examples) == {"/data/img/zz-missing.png", "/other/a.png"}
    assert not list(scratch.iterdir())  # the scratch folders are gone


def test_the_prompts_hash_is_the_one_earlier_runs_were_planned_with(tmp_path, monkeypatch):
    """A prompted run planned before prompts streamed resumes: same images and prompts, same
    hash, however the prompts are cut up (an int score stays an int in the hash)."""
    listed = uris(200)
    rows = table_rows(listed, ["/nowhere.png"], 600, seed=3)
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert pq.read_schema(path).field("score").type == pa.int64()
    listing = sorted_listing(pa.array(listed))
    expected = expected_prompts(rows, listed)

    with plan_prompts(Location(str(path)), listing, shard_size=1000) as planned:
        assert planned.info["hash"] == old_hash(expected, listed)
        assert planned.info["matched"] == sum(len(p) for p in expected.values())
    monkeypatch.setattr(prompt_plan, "SPILL_ROWS", 11)
    monkeypatch.setattr(prompt_plan, "PIECE_ROWS", 7)
    with plan_prompts(Location(str(path)), listing, shard_size=1) as planned:
        assert planned.info["hash"] == old_hash(expected, listed)
        assert planned.info["matched"] == sum(len(p) for p in expected.values())
        rows[5]["box"] = [1.0, 2.0, 3.0, 5.0]  # one prompt moved: another hash
        pq.write_table(pa.Table.from_pylist(rows), path)
        with plan_prompts(Location(str(path)), listing, shard_size=1) as other:
            assert other.info["hash"] != planned.info["hash"]


def test_a_run_reads_each_shard_s_prompts_from_the_files_beside_its_listing(tmp_path, monkeypatch):
    """Planned, installed into the run and read back per shard as an actor does: five blocks,
    the last one partial, each ordered in pieces; every image's prompts in the file's order."""
    listed = uris(523)
    rows = table_rows(listed, ["/nowhere.png"], 2000, seed=5)
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    listing = sorted_listing(pa.array(listed))
    layout = RunLayout(Location(str(tmp_path / "run")))
    info = new_listing(layout, listing, shard_size=2)
    shards = listing_shards(info, 2)
    assert len({shard.block for shard in shards}) == 5 and shards[-1].size == 1
    monkeypatch.setattr(prompt_plan, "SPILL_ROWS", 97)
    monkeypatch.setattr(prompt_plan, "PIECE_ROWS", 50)  # ~400 prompts a block: 8 pieces
    with plan_prompts(Location(str(path)), listing, shard_size=2) as planned:
        install_prompt_blocks(layout, shards, planned)
    expected = expected_prompts(rows, listed)
    for shard in shards:
        own = read_shard_prompts(layout, shard, shard.size)
        images = read_shard_uris(layout, shard)
        assert [list(prompts) for prompts in own] == [expected.get(uri, []) for uri in images]


def test_coco_annotations_may_come_before_images(tmp_path):
    """A streaming parser must not assume the images come first."""
    listed = uris(5)
    document = {
        "annotations": [
            {"id": 1, "image_id": 30, "bbox": [1, 2, 3, 4], "category_id": 1},
            {"id": 2, "image_id": 10, "bbox": [5, 6, 7, 8], "category_id": 2, "score": 0.5},
            {"id": 3, "image_id": 30, "bbox": [9, 9, 9, 9], "category_id": 2},
        ],
        "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "fork"}],
        "images": [{"id": 10, "file_name": "00001.png"}, {"id": 30, "file_name": "img/00003.png"}],
    }
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(document))
    refs = [ImageRef(image_id_for(uri), uri) for uri in listed]
    found = read_prompts(Location(str(path)), refs)
    assert found.by_uri == {
        listed[1]: [
            Prompt(
                (5.0, 6.0, 7.0, 8.0), category_id=2, category_name="fork", source_id="2", score=0.5
            )
        ],
        listed[3]: [
            Prompt((1.0, 2.0, 3.0, 4.0), category_id=1, category_name="cup", source_id="1"),
            Prompt((9.0, 9.0, 9.0, 9.0), category_id=2, category_name="fork", source_id="3"),
        ],
    }


def test_a_coco_file_cut_off_midway_is_one_line(tmp_path):
    listed = uris(3)
    annotations = [{"id": k, "image_id": 1, "bbox": [1, 1, 5, 5]} for k in range(2000)]
    text = json.dumps({"images": [{"id": 1, "file_name": "00001.png"}], "annotations": annotations})
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(PromptsError, match="cannot read prompts") as error:
        plan_prompts(Location(str(path)), sorted_listing(pa.array(listed)), shard_size=10)
    assert "\n" not in str(error.value)


def test_a_bad_row_after_spills_is_one_line_and_leaves_no_scratch(tmp_path, scratch, monkeypatch):
    listed = uris(50)
    rows = table_rows(listed, ["/nowhere.png"], 400)
    rows[350]["box"] = [1.0, 2.0, 3.0]  # late in the file: parts are spilled by then
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    monkeypatch.setattr(prompt_plan, "SPILL_ROWS", 40)
    with pytest.raises(PromptsError, match=r"row 351 of .*prompts.parquet: box must be") as error:
        plan_prompts(Location(str(path)), sorted_listing(pa.array(listed)), shard_size=10)
    assert "\n" not in str(error.value)
    assert not list(scratch.iterdir())


def test_a_key_that_fits_two_images_is_refused_only_when_it_has_prompts(tmp_path):
    listed = ["/d/train/a.png", "/d/val/a.png", "/d/val/b.png"]
    document = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"id": 7, "image_id": 2, "bbox": [1, 1, 2, 2]}],
    }
    path = tmp_path / "i.json"
    path.write_text(json.dumps(document))
    refs = [ImageRef(image_id_for(uri), uri) for uri in listed]
    assert list(read_prompts(Location(str(path)), refs).by_uri) == ["/d/val/b.png"]
    document["annotations"].append({"id": 8, "image_id": 1, "bbox": [1, 1, 2, 2]})
    path.write_text(json.dumps(document))
    with pytest.raises(PromptsError, match=r"a.png fits 2 images \(/d/train/a.png, /d/val/a.png\)"):
        read_prompts(Location(str(path)), refs)
