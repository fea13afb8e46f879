"""Object storage for real: a SeaweedFS S3 server on loopback, no in-process mock."""

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from pycocotools import mask as mask_utils

from pipeline.core.config import load_config
from pipeline.core.storage import Location
from pipeline.job.runner import execute, plan_run
from tests.conftest import MICRO_CONFIG, PERMISSIVE, autolabel, make_scene

pytestmark = pytest.mark.usefixtures("ray_local")


def upload_images(fs, prefix: str, count: int, tmp_path: Path) -> list[str]:
    uris = []
    for i in range(count):
        local = tmp_path / f"upload-{i}.png"
        make_scene(56 + 4 * i, 40, seed=40 + i).save(local)
        fs.put_file(str(local), f"{prefix}/img_{i}.png")
        uris.append(f"s3://{prefix}/img_{i}.png")
    return uris


def test_bucket_in_bucket_out_with_checkpoint_in_bucket(s3, micro_checkpoint, tmp_path):
    fs, bucket = s3
    uris = upload_images(fs, f"{bucket}/photos", 4, tmp_path)
    fs.pipe(f"{bucket}/photos/notes/broken.jpg", b"\xff\xd8\xff truncated")
    fs.put_file(micro_checkpoint, f"{bucket}/models/micro.pt")
    output = f"s3://{bucket}/labels/run1"
    overrides = [
        f"model.config={MICRO_CONFIG}",
        f"model.checkpoint=s3://{bucket}/models/micro.pt",
        *PERMISSIVE,
        "runtime.shard_size=2",
    ]
    result = autolabel("run", "--input", f"s3://{bucket}/photos", "--output", output, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "autolabel-test-secret" not in result.stdout + result.stderr

    images = ds.dataset(f"{bucket}/labels/run1/images", filesystem=fs).to_table().to_pylist()
    masks = ds.dataset(f"{bucket}/labels/run1/masks", filesystem=fs).to_table().to_pylist()
    assert sorted(r["image_uri"] for r in images) == sorted(
        [*uris, f"s3://{bucket}/photos/notes/broken.jpg"]
    )
    assert [r["status"] for r in images].count("ok") == 4
    assert masks and all(r["image_uri"].startswith("s3://") for r in masks)
    for row in masks:
        assert row["area"] == int(mask_utils.decode(row["segmentation"]).sum())
    manifest = json.loads(fs.cat(f"{bucket}/labels/run1/_run.json"))
    assert manifest["status"] == "complete" and manifest["counts"]["images"] == 5
    assert fs.ls(f"{bucket}/labels/run1/_shards") and not fs.glob(f"{bucket}/**/*.partial")


def test_manifest_of_s3_uris_and_secrets_in_options_never_leak(s3, micro_overrides, tmp_path):
    fs, bucket = s3
    uris = upload_images(fs, f"{bucket}/a", 3, tmp_path)
    listing = f"{bucket}/lists/images.txt"
    fs.pipe(listing, ("\n".join(uris) + f"\ns3://{bucket}/a/missing.png\n").encode())
    secret = "autolabel-test-secret"  # the server's real one: the run must use it, never show it
    overrides = [
        *micro_overrides,
        f"storage.options.secret={secret}",
        "storage.options.key=autolabel-test",
    ]
    job = load_config(None, overrides)
    options = job.storage.options
    source, output = Location(f"s3://{listing}", options), Location(str(tmp_path / "out"), options)
    plan = plan_run(job, source, output)
    summary = execute(plan, show_progress=False)
    assert summary.ok == 3 and summary.errors == 1
    images = ds.dataset(tmp_path / "out" / "images").to_table().to_pylist()
    missing = [r for r in images if r["image_uri"].endswith("missing.png")][0]
    assert missing["status"] == "error" and "cannot read file" in missing["error"]
    everything = (tmp_path / "out" / "_run.json").read_text() + json.dumps(images)
    for marker in (tmp_path / "out" / "_shards").iterdir():
        everything += marker.read_text()
    assert secret not in everything


@pytest.mark.slow
def test_coco_and_yolo_prompts_in_a_bucket_label_images_in_a_bucket(s3, tmp_path):
    """`autolabel run --prompts` with images, prompts and output all on S3."""
    from pipeline.synthetic.scenes import write_dataset

    fs, bucket = s3
    scenes = tmp_path / "scenes"
    write_dataset(str(scenes), 2, seed=6060)
    truth = json.loads((scenes / "annotations.json").read_text())
    fs.put(str(scenes / "images"), f"{bucket}/scenes", recursive=True)
    fs.pipe(f"{bucket}/prompts/coco.json", json.dumps(truth).encode())
    for image in truth["images"]:
        anns = [a for a in truth["annotations"] if a["image_id"] == image["id"]]
        lines = "".join(
            f"0 {(x + w / 2) / 256} {(y + h / 2) / 256} {w / 256} {h / 256}\n"
            for x, y, w, h in (a["bbox"] for a in anns)
        )
        fs.pipe(f"{bucket}/prompts/yolo/{image['file_name'][:-4]}.txt", lines.encode())
    for name in ("coco.json", "yolo"):
        output = f"s3://{bucket}/labels/{name}"
        result = autolabel(
            "run",
            "--input",
            f"s3://{bucket}/scenes",
            "--output",
            output,
            "--prompts",
            f"s3://{bucket}/prompts/{name}",
            "--no-progress",
            "model.name=sam2-tiny-synthetic",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        images = ds.dataset(f"{bucket}/labels/{name}/images", filesystem=fs).to_table()
        assert images.column("num_prompts").to_pylist() == [
            sum(a["image_id"] == image["id"] for a in truth["annotations"])
            for image in sorted(truth["images"], key=lambda i: i["file_name"])
        ]
        masks = ds.dataset(f"{bucket}/labels/{name}/masks", filesystem=fs).to_table()
        assert masks.num_rows == sum(images.column("num_masks").to_pylist()) > 0
