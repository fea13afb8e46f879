"""Runs over inputs that grow: ``--append`` labels only new images, into new shards, and a
grown input without it is refused with a message that names it."""

import pyarrow as pa
import pytest

from pipeline.job.listing import read_shard_uris
from pipeline.job.manifest import RunConflictError
from pipeline.job.sources import sorted_listing
from pipeline.results.dataset import open_run
from tests.conftest import autolabel, make_scene
from tests.test_pipeline import run

pytestmark = pytest.mark.usefixtures("ray_local")


def image_rows(output) -> list[dict]:
    return open_run(str(output)).images.to_table().to_pylist()


def test_a_grown_input_is_refused_without_append_and_appended_with_it(
    image_folder, tmp_path, micro_overrides
):
    output = tmp_path / "out"
    overrides = [*micro_overrides, "runtime.shard_size=3"]
    run(image_folder, output, overrides)
    first = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    for i in range(4):
        make_scene(60, 40, seed=100 + i).save(image_folder / f"new_{i}.png")

    with pytest.raises(RunConflictError, match=r"4 new image\(s\).*--append"):
        run(image_folder, output, overrides)
    cli = autolabel("run", "--input", str(image_folder), "--output", str(output), *overrides)
    assert cli.returncode == 2 and "--append" in cli.stderr and len(cli.stderr.splitlines()) == 1

    plan, summary = run(image_folder, output, overrides, append=True)
    assert [(s.name, s.size) for s in plan.todo] == [("shard-00003", 3), ("shard-00004", 1)]
    assert summary.succeeded and summary.shards_done == 2 and summary.shards_skipped == 3
    kept = {p: t for p, t in first.items() if "_run.json" not in p.name}
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "committed shards untouched"
    rows = image_rows(output)
    uris = sorted(str(p) for p in image_folder.rglob("*") if p.is_file())
    assert sorted(r["image_uri"] for r in rows) == uris, "every image exactly once"
    new_rows = [r for r in rows if r["shard"] in ("shard-00003", "shard-00004")]
    assert sorted(r["image_uri"].rsplit("/", 1)[1] for r in new_rows) == [
        f"new_{i}.png" for i in range(4)
    ]
    listing = open_run(str(output)).manifest["listing"]
    assert [b["images"] for b in listing["batches"]] == [8, 4]
    assert listing["batches"][1]["first_shard"] == 3 and listing["batches"][1]["at"] > 0
    assert listing["batches"][1]["input_images"] == 12

    # Same input again: nothing to do. One image gone and one new: the gone one is reported
    # and keeps its rows; the new one gets the next shard.
    plan, _ = run(image_folder, output, overrides, append=True)
    assert plan.todo == []
    (image_folder / "img_0.png").unlink()
    make_scene(60, 40, seed=200).save(image_folder / "zz_latest.png")
    with pytest.raises(RunConflictError, match=r"1 new image\(s\), 1 image\(s\) of the run"):
        run(image_folder, output, overrides)
    plan, summary = run(image_folder, output, overrides, append=True)
    assert [s.name for s in plan.todo] == ["shard-00005"]
    removed = plan.manifest["listing"]["removed"]
    assert removed["count"] == 1 and removed["examples"][0].endswith("img_0.png")
    rows = image_rows(output)
    assert len(rows) == 13 == len({r["image_id"] for r in rows})
    assert any(r["image_uri"].endswith("img_0.png") for r in rows)
    layout = open_run(str(output)).layout
    assert read_shard_uris(layout, plan.todo[0])[0].endswith("zz_latest.png")


def test_an_interrupted_append_resumes_its_own_shards(image_folder, tmp_path, micro_overrides):
    output = tmp_path / "out"
    overrides = [*micro_overrides, "runtime.shard_size=4"]
    run(image_folder, output, overrides)
    for i in range(5):
        make_scene(60, 40, seed=300 + i).save(image_folder / f"more_{i}.png")
    run(image_folder, output, overrides, append=True)
    (output / "_shards" / "shard-00003.json").unlink()  # the append's last shard never committed
    plan, summary = run(image_folder, output, overrides)  # the same input: a plain resume
    assert [s.name for s in plan.todo] == ["shard-00003"] and summary.succeeded
    assert len(image_rows(output)) == 13


def test_an_append_merges_the_listing_with_the_runs_listing_files(tmp_path):
    """The streaming merge (issue 24) finds the same new and gone images as sets do, with
    listing chunks of any size against a run of two batches (each sorted on its own)."""
    import random

    from pipeline.core.storage import Location
    from pipeline.core.writer import RunLayout
    from pipeline.job.listing import continued_listing, merge_with_run, new_listing

    rng = random.Random(7)
    names = [f"s3://bucket/{n:06d}.jpg" for n in rng.sample(range(10**6), 294)]
    names += [f"s3://bucket/{name}" for name in ("a", "a/b", "a0", "é.jpg", "Z.jpg", "中.png")]
    rng.shuffle(names)  # prefixes and non-ASCII names among the others, on both sides
    first, later = names[:120], names[120:200]
    layout = RunLayout(Location(str(tmp_path / "run")))
    stored = new_listing(layout, sorted_listing(pa.array(first)), shard_size=7)
    grown = first[30:] + later + later[:10]  # 30 gone, 80 new (interleaved), repeats
    rng.shuffle(grown)
    info = continued_listing(layout, stored, sorted_listing(pa.array(grown)), 7, append=True)
    assert len(info["batches"]) == 2 and info["removed"]["count"] == len(set(first[:30]))
    held_uris = set(first) | set(later)
    now = first[:10] + first[60:] + later[40:] + names[200:]
    listing = sorted_listing(pa.array(now))
    in_order = [ref.uri for ref in listing.refs()]
    for chunk in (1, 3, 50, 65_536):
        held, removed = merge_with_run(layout, info, listing, chunk)
        assert [uri for uri, h in zip(in_order, held, strict=True) if h] == [
            uri for uri in in_order if uri in held_uris
        ]
        assert removed["count"] == len(held_uris - set(now))
        assert set(removed["examples"]) <= held_uris - set(now) and len(removed["examples"]) == 5


def test_repeats_across_listing_chunks_are_dropped():
    uris = pa.array(["c", "a", "b", "a", "c", "c", "b", "d"])
    listing = sorted_listing(uris, chunk=2)
    assert [r.uri for r in listing.refs()] == ["a", "b", "c", "d"]
    assert listing.digest == sorted_listing(pa.array(["d", "c", "b", "a"])).digest


@pytest.mark.slow
def test_the_summary_counts_the_nodes_of_this_run(image_folder, tmp_path, micro_overrides):
    """A resumed run's earlier shards were written by another Ray start (other node ids) on
    the same machine: the summary counts this run's nodes, not 2 (issue 22)."""
    output = tmp_path / "out"
    args = ["run", "--input", str(image_folder), "--output", str(output), "--no-progress"]
    first = autolabel(*args, *micro_overrides, "runtime.shard_size=4")
    assert first.returncode == 0, first.stderr
    make_scene(60, 40, seed=300).save(image_folder / "later.png")
    grown = autolabel(*args, "--append", *micro_overrides, "runtime.shard_size=4")
    assert grown.returncode == 0, grown.stderr
    assert "1 Ray node(s) wrote this run's shards" in grown.stdout, grown.stdout
