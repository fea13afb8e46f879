"""Listing inputs and planning shards: sorted, deterministic, stable ids."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout
from pipeline.job.listing import listing_shards, new_listing, read_shard_uris
from pipeline.job.sources import InputError, image_id_for, list_images, list_input


def test_folder_is_listed_recursively_and_sorted(image_folder):
    refs = list_images(Location(str(image_folder)))
    uris = [r.uri for r in refs]
    assert uris == sorted(uris)
    assert len(uris) == 8  # 6 PNG, a nested JPEG and a broken JPEG (an error row later)
    assert any(u.endswith("nested/deep.jpg") for u in uris)
    assert len({r.image_id for r in refs}) == 8
    assert all(0 < r.image_id < 2**63 for r in refs)


def test_ids_are_stable_across_listings(image_folder):
    first = list_images(Location(str(image_folder)))
    second = list_images(Location(f"file://{image_folder}"))
    assert [r.image_id for r in first] == [r.image_id for r in second]
    assert first[0].image_id == image_id_for(first[0].uri)


def test_glob(image_folder):
    refs = list_images(Location(str(image_folder / "img_*.png")))
    assert [r.uri.rsplit("/", 1)[1] for r in refs] == [f"img_{i}.png" for i in range(6)]


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_manifests(tmp_path, image_folder, kind):
    uris = [str(image_folder / f"img_{i}.png") for i in (3, 1, 2)]
    manifest = tmp_path / f"list.{kind}"
    if kind == "txt":
        manifest.write_text("# images\n" + "\n".join(uris) + "\n\n")
    elif kind == "csv":
        manifest.write_text("uri,label\n" + "".join(f"{u},x\n" for u in uris))
    else:
        pq.write_table(pa.table({"uri": uris}), manifest)
    assert [r.uri for r in list_images(Location(str(manifest)))] == sorted(uris)


def test_manifest_without_uri_column(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\na.jpg\n")
    with pytest.raises(InputError, match="has no 'uri' column"):
        list_images(Location(str(manifest)))


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        list_images(Location(str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt.bak").write_text("x")
    with pytest.raises(InputError, match="no images found"):
        list_images(Location(str(tmp_path / "empty")))


def test_shard_plan_is_deterministic_and_lives_in_the_run(image_folder, tmp_path):
    refs = list_images(Location(str(image_folder)))
    layouts = [RunLayout(Location(str(tmp_path / name))) for name in ("a", "b")]
    infos = [new_listing(layout, list_input(Location(str(image_folder))), 3) for layout in layouts]
    shards = listing_shards(infos[0], 3)
    assert [s.size for s in shards] == [3, 3, 2]
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert [u for s in shards for u in read_shard_uris(layouts[0], s)] == [r.uri for r in refs]
    assert listing_shards(infos[1], 3) == shards
    assert infos[0]["input_digest"] == infos[1]["input_digest"]
    files = [
        sorted(p.read_bytes() for p in (tmp_path / n / "_listing").rglob("*.parquet")) for n in "ab"
    ]
    assert files[0] == files[1] and len(files[0]) == 1


def test_duplicates_are_listed_once(tmp_path, image_folder):
    uris = [str(image_folder / f"img_{i}.png") for i in (3, 1, 3, 2, 1)]
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(uris))
    listing = list_input(Location(str(manifest)))
    assert [r.uri for r in listing.refs()] == sorted(set(uris)) and len(listing) == 3
