"""Listing inputs and planning shards: sorted, deterministic, stable ids."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.storage import Location
from pipeline.job.sources import InputError, image_id_for, list_images, plan_shards


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


def test_shard_plan_is_deterministic(image_folder):
    refs = list_images(Location(str(image_folder)))
    shards = plan_shards(refs, 3)
    assert [len(s.images) for s in shards] == [3, 3, 2]
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert [img for s in shards for img in s.images] == refs
    assert plan_shards(list_images(Location(str(image_folder))), 3) == shards
