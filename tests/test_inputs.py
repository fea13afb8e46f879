"""Inputs read exactly as the user meant: every image listed (or the listing says why not),
every prompt on its own image (or the run is refused, naming both sides)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import load_config
from pipeline.core.imageio import ImageReadError, load_image
from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location
from pipeline.job.prompts import PromptsError
from pipeline.job.sources import InputError, list_images, list_input
from tests.conftest import ROOT, autolabel, make_scene, read_prompts


def scene(path: Path, seed: int = 0) -> Path:
    """A small scene image at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    make_scene(64, 48, seed=seed).save(path)
    return path


def uris(source) -> list[str]:
    return [ref.uri for ref in list_images(Location(str(source)))]


# --- prompts matched to their own image -------------------------------------------------------


@pytest.fixture()
def yolo_splits(tmp_path):
    """The usual YOLO layout: images/{train,val}/000001.png, labels/{train,val}/000001.txt."""
    for split, seed in (("train", 1), ("val", 2)):
        scene(tmp_path / "images" / split / "000001.png", seed)
    labels = tmp_path / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "val").mkdir()
    (labels / "train" / "000001.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (labels / "val" / "000001.txt").write_text("1 0.3 0.3 0.1 0.1\n1 0.7 0.7 0.1 0.1\n")
    (labels / "classes.txt").write_text("cat\ndog\n")
    return tmp_path


def test_yolo_labels_in_splits_go_to_the_image_of_their_own_split(yolo_splits):
    images = list_images(Location(str(yolo_splits / "images")))
    found = read_prompts(Location(str(yolo_splits / "labels")), images)
    train = found.by_uri[str(yolo_splits / "images" / "train" / "000001.png")]
    val = found.by_uri[str(yolo_splits / "images" / "val" / "000001.png")]
    assert [p.category_name for p in train] == ["cat"]
    assert [p.category_name for p in val] == ["dog", "dog"]
    assert found.count == 3 and found.unmatched == 0


def test_yolo_rule_images_to_labels_holds_when_only_one_split_is_given(yolo_splits):
    """--prompts labels/train with --input images: YOLO's own rule (images/ → labels/) gives
    the train image its label; the val image has no label file there, so no prompts."""
    images = list_images(Location(str(yolo_splits / "images")))
    found = read_prompts(Location(str(yolo_splits / "labels" / "train")), images)
    assert [p.category_id for p in found.by_uri[str(yolo_splits / "images/train/000001.png")]] == [
        0
    ]
    assert str(yolo_splits / "images/val/000001.png") not in found.by_uri


def test_a_label_stem_that_fits_two_images_is_refused_naming_both(yolo_splits, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "000001.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    images = list_images(Location(str(yolo_splits / "images")))
    with pytest.raises(PromptsError) as error:
        read_prompts(Location(str(flat)), images)
    message = str(error.value)
    assert "000001.txt" in message and "train/000001.png" in message
    assert "val/000001.png" in message and "\n" not in message


def test_labels_laid_out_elsewhere_pair_by_their_path_under_the_label_folder(tmp_path):
    """Not YOLO's images/ ↔ labels/ layout: ann/train/000001.txt ends pics/train/000001.png."""
    for split in ("train", "val"):
        scene(tmp_path / "pics" / split / "000001.png")
    (tmp_path / "ann" / "train").mkdir(parents=True)
    (tmp_path / "ann" / "train" / "000001.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    found = read_prompts(
        Location(str(tmp_path / "ann")), list_images(Location(str(tmp_path / "pics")))
    )
    assert list(found.by_uri) == [str(tmp_path / "pics" / "train" / "000001.png")]


def test_a_short_name_beside_a_longer_one_is_refused_when_it_fits_two_images(tmp_path):
    """file_names a.png and train/a.png: a.png ends val/a.png and train/a.png alike."""
    for split in ("train", "val"):
        scene(tmp_path / "images" / split / "a.png")
    coco = tmp_path / "instances.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "train/a.png"}, {"id": 2, "file_name": "a.png"}],
                "annotations": [
                    {"id": 1, "image_id": 1, "bbox": [1, 2, 10, 10]},
                    {"id": 2, "image_id": 2, "bbox": [1, 2, 10, 10]},
                ],
            }
        )
    )
    with pytest.raises(PromptsError, match="a.png fits 2 images"):
        read_prompts(Location(str(coco)), list_images(Location(str(tmp_path / "images"))))


def test_a_blank_line_in_classes_txt_is_a_class_without_a_name(tmp_path):
    scene(tmp_path / "images" / "a.png")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("cat\n\ndog\nbird\n")
    (labels / "a.txt").write_text("2 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.1 0.1\n")
    found = read_prompts(Location(str(labels)), list_images(Location(str(tmp_path / "images"))))
    dog, unnamed = found.by_uri[str(tmp_path / "images" / "a.png")]
    assert (dog.category_id, dog.category_name) == (2, "dog")
    assert (unnamed.category_id, unnamed.category_name) == (1, None)


def test_data_yaml_names_as_a_dict_keep_their_ids(tmp_path):
    scene(tmp_path / "images" / "a.png")
    labels = tmp_path / "labels"
    labels.mkdir()
    (tmp_path / "data.yaml").write_text("names:\n  0: cat\n  2: dog\n")  # beside labels/
    (labels / "a.txt").write_text("2 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n")
    found = read_prompts(Location(str(labels)), list_images(Location(str(tmp_path / "images"))))
    dog, other = found.by_uri[str(tmp_path / "images" / "a.png")]
    assert dog.category_name == "dog" and other.category_name is None
    assert found.unknown_categories.count == 1 and found.unknown_categories.examples == ["5"]


def test_coco_file_names_with_dot_slash_and_backslashes_find_their_images(tmp_path):
    scene(tmp_path / "images" / "img0.png")
    scene(tmp_path / "images" / "sub" / "img1.png", 1)
    coco = tmp_path / "instances.json"
    coco.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "./img0.png"},
                    {"id": 2, "file_name": "sub\\img1.png"},
                ],
                "annotations": [
                    {"id": 7, "image_id": 1, "bbox": [1, 2, 10, 10], "category_id": 1},
                    {"id": 8, "image_id": 2, "bbox": [1, 2, 10, 10], "category_id": 9},
                ],
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )
    found = read_prompts(Location(str(coco)), list_images(Location(str(tmp_path / "images"))))
    assert [p.source_id for p in found.by_uri[str(tmp_path / "images" / "img0.png")]] == ["7"]
    assert [p.source_id for p in found.by_uri[str(tmp_path / "images/sub/img1.png")]] == ["8"]
    assert found.unknown_categories.count == 1 and found.unknown_categories.examples == ["9"]


def test_a_coco_file_name_that_fits_two_images_is_refused(yolo_splits, tmp_path):
    coco = tmp_path / "instances.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "000001.png"}],
                "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 2, 10, 10]}],
            }
        )
    )
    with pytest.raises(PromptsError, match="fits 2 images"):
        read_prompts(Location(str(coco)), list_images(Location(str(yolo_splits / "images"))))


def test_relative_image_uris_in_a_table_are_read_from_the_tables_folder(tmp_path):
    scene(tmp_path / "data" / "images" / "img0.png")
    table = tmp_path / "data" / "prompts.csv"
    table.write_text(
        'image_uri,box\nimages/img0.png,"[1, 2, 10, 10]"\n./images/img0.png,"[3, 3, 5, 5]"\n'
    )
    images = list_images(Location(str(tmp_path / "data" / "images")))
    found = read_prompts(Location(str(table)), images)
    assert len(found.by_uri[str(tmp_path / "data" / "images" / "img0.png")]) == 2


def test_prompts_that_match_no_image_are_refused_with_examples_of_both_sides(tmp_path):
    scene(tmp_path / "images" / "img0.png")
    table = tmp_path / "prompts.csv"
    table.write_text('image_uri,box\nelsewhere/img0.png,"[1, 2, 10, 10]"\n')
    with pytest.raises(PromptsError) as error:
        read_prompts(Location(str(table)), list_images(Location(str(tmp_path / "images"))))
    message = str(error.value)
    assert "none of the 1 prompt" in message
    assert str(tmp_path / "elsewhere" / "img0.png") in message
    assert str(tmp_path / "images" / "img0.png") in message


def test_a_prompts_csv_with_a_byte_order_mark_reads_like_any_other(tmp_path):
    scene(tmp_path / "images" / "img0.png")
    table = tmp_path / "excel.csv"
    uri = tmp_path / "images" / "img0.png"
    table.write_bytes(f'image_uri,box\n{uri},"[1, 2, 10, 10]"\n'.encode("utf-8-sig"))
    found = read_prompts(Location(str(table)), list_images(Location(str(tmp_path / "images"))))
    assert found.count == 1


def test_a_non_finite_coordinate_is_that_prompts_error_not_a_mask():
    from pipeline.model.prompted import PromptedGenerator
    from pipeline.model.registry import build_model, resolve_model

    model = build_model(resolve_model("sam2-tiny-synthetic", None, None), "cpu")
    amg = load_config(None, []).amg
    image = np.array(make_scene(64, 48, seed=3))
    prompts = [
        Prompt(box=(float("nan"), 10.0, 20.0, 20.0)),
        Prompt(points=((5.0, float("inf")),), point_labels=(1,)),
        Prompt(box=(5.0, 5.0, 30.0, 30.0)),
    ]
    nan_box, inf_click, good = PromptedGenerator(model, amg).generate(image, prompts)
    assert isinstance(nan_box, str) and "not a finite number" in nan_box
    assert isinstance(inf_click, str) and "not a finite number" in inf_click
    assert isinstance(good, dict) or "no mask" in good


# --- the listing: every image, or a word about what it did not take ----------------------------


def test_a_symlinked_subfolder_is_followed_and_a_link_loop_is_not(tmp_path):
    outside = tmp_path / "elsewhere"
    for k in range(3):
        scene(outside / f"far{k}.png", k)
    photos = tmp_path / "photos"
    scene(photos / "near.png")
    (photos / "linked").symlink_to(outside, target_is_directory=True)
    (photos / "loop").symlink_to(photos, target_is_directory=True)
    listing = list_input(Location(str(photos)))
    names = sorted(Path(uri).name for uri in listing.uris.to_pylist())
    assert names == ["far0.png", "far1.png", "far2.png", "near.png"]
    assert listing.skipped["linked_again"].count == 1
    only_link = tmp_path / "only_link"
    only_link.mkdir()
    (only_link / "data").symlink_to(outside, target_is_directory=True)
    assert len(uris(only_link)) == 3


def test_two_links_to_one_place_list_it_once_and_a_link_inside_keeps_the_real_path(tmp_path):
    outside = tmp_path / "elsewhere"
    scene(outside / "far.png")
    photos = tmp_path / "photos"
    scene(photos / "real" / "near.png")
    (photos / "a_link").symlink_to(photos / "real", target_is_directory=True)  # sorts first
    (photos / "ext1").symlink_to(outside, target_is_directory=True)
    (photos / "ext2").symlink_to(outside, target_is_directory=True)
    listing = list_input(Location(str(photos)))
    assert sorted(listing.uris.to_pylist()) == [
        str(photos / "ext1" / "far.png"),
        str(photos / "real" / "near.png"),
    ]
    assert listing.skipped["linked_again"].count == 2


def test_an_unreadable_subfolder_is_a_one_line_refusal_naming_it():
    """Run as root here, so the listing runs in a child that gives up root first."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o755)
        scene(base / "photos" / "ok.png").chmod(0o644)
        (base / "photos").chmod(0o755)
        locked = base / "photos" / "locked"
        for k in range(2):
            scene(locked / f"x{k}.png", k)
        locked.chmod(0o000)
        child = (
            "import os, sys\n"
            "from pipeline.core.storage import Location\n"
            "from pipeline.job.sources import InputError, list_input\n"
            f"source = Location({str(base / 'photos')!r})\n"
            "if os.geteuid() == 0:\n"
            "    os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            "    print(list_input(source).uris.to_pylist())\n"
            "except InputError as error:\n"
            "    print('InputError:', error)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("InputError: cannot read folder")
        assert str(locked) in lines[0]
    finally:
        (base / "photos" / "locked").chmod(0o755)
        import shutil

        shutil.rmtree(base)


def test_a_folder_named_like_a_pattern_is_taken_as_the_folder(tmp_path):
    bracketed = tmp_path / "photos [2023]"
    for k in range(2):
        scene(bracketed / f"p{k}.png", k)
    scene(tmp_path / "photos 2" / "q.png")  # what "[2023]" would match as a pattern
    assert [Path(u).name for u in uris(bracketed)] == ["p0.png", "p1.png"]
    question = tmp_path / "what?"
    scene(question / "w.png")
    assert [Path(u).name for u in uris(question)] == ["w.png"]
    assert [Path(u).name for u in uris(tmp_path / "photos [2023]" / "p*.png")] == [
        "p0.png",
        "p1.png",
    ]


def test_relative_paths_in_a_manifest_are_read_from_the_manifests_folder(tmp_path):
    data = tmp_path / "data"
    scene(data / "img0.png")
    scene(data / "sub" / "img1.png", 1)
    (data / "list.txt").write_text("img0.png\n./sub/img1.png\n")
    (data / "list.csv").write_text("uri\nimg0.png\nsub/../sub/img1.png\n")
    expected = [str(data / "img0.png"), str(data / "sub" / "img1.png")]
    assert uris(data / "list.txt") == expected
    assert uris(data / "list.csv") == expected
    here = os.getcwd()
    os.chdir(data)
    try:  # run from the manifest's folder, the URIs are still absolute
        assert [ref.uri for ref in list_images(Location("list.txt"))] == expected
    finally:
        os.chdir(here)


def test_a_name_that_is_not_utf8_is_listed_as_an_error_row_naming_its_bytes(tmp_path):
    photos = tmp_path / "photos"
    scene(photos / "good.png")
    raw = os.fsencode(str(photos)) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        f.write((photos / "good.png").read_bytes())
    listing = list_input(Location(str(photos)))
    listed = listing.uris.to_pylist()
    assert len(listed) == 2 and str(photos / "good.png") in listed
    [odd] = [uri for uri in listed if "caf" in uri]
    assert listing.skipped["bad_name"].count == 1
    with pytest.raises(ImageReadError, match="not valid UTF-8") as error:
        load_image(Location(odd))
    assert "caf\\xe9.png" in str(error.value)


def test_hidden_files_and_resource_forks_are_skipped_and_counted_every_pillow_format_listed(
    tmp_path,
):
    photos = tmp_path / "photos"
    scene(photos / "a.png")
    scene(photos / ".hidden" / "h.png")
    scene(photos / "._a.png")
    make_scene(64, 48, seed=5).save(photos / "b.jfif", format="JPEG")
    make_scene(64, 48, seed=6).save(photos / "c.jpe", format="JPEG")
    (photos / "notes.txt").write_text("not an image")
    listing = list_input(Location(str(photos)))
    assert sorted(Path(u).name for u in listing.uris.to_pylist()) == ["a.png", "b.jfif", "c.jpe"]
    assert listing.skipped["hidden"].count == 2
    assert listing.skipped["not_image"].count == 1


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--output", "--input"])
def test_an_empty_path_is_a_usage_error(tmp_path, flag, micro_overrides):
    scene(tmp_path / "images" / "a.png")
    values = {"--input": str(tmp_path / "images"), "--output": str(tmp_path / "out")}
    values[flag] = ""
    args = [item for pair in values.items() for item in pair]
    result = autolabel("run", *args, "--no-progress", *micro_overrides)
    assert result.returncode == 2
    assert f"argument {flag}: an empty path" in result.stderr
    written = {"_run.json", "_listing", "_shards", "masks"} & set(os.listdir(ROOT))
    assert not written, "nothing is written where the command ran"


def test_a_run_whose_prompts_match_nothing_is_refused_before_labelling(tmp_path, micro_overrides):
    scene(tmp_path / "images" / "a.png")
    table = tmp_path / "prompts.csv"
    table.write_text('image_uri,box\nimg/a.png,"[1, 2, 10, 10]"\n')
    result = autolabel(
        "run",
        "--input",
        str(tmp_path / "images"),
        "--output",
        str(tmp_path / "out"),
        "--prompts",
        str(table),
        "--no-progress",
        *micro_overrides,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "none of the 1 prompt" in line and str(tmp_path / "images" / "a.png") in line
    assert not (tmp_path / "out" / "_run.json").exists()


def test_a_folder_of_only_skipped_files_says_what_it_skipped(tmp_path):
    empty = tmp_path / "empty"
    scene(empty / "._a.png")
    (empty / "readme.md").write_text("x")
    with pytest.raises(InputError) as error:
        list_input(Location(str(empty)))
    message = str(error.value)
    assert message.startswith(f"no images found in {empty}")
    assert "1 hidden" in message and "1 file without an image extension" in message


def test_in_a_bucket_the_same_rules_hold(s3, tmp_path):
    """A bracketed prefix, hidden keys, a resource fork, a .jfif and a relative manifest on S3."""
    fs, bucket = s3
    local = scene(tmp_path / "a.png")
    top = f"{bucket}/photos [2023]"
    for key in ("a.png", ".hidden/h.png", "._a.png", "sub/c.jfif"):
        fs.put_file(str(local), f"{top}/{key}")
    fs.pipe(f"{top}/readme.md", b"x")
    listing = list_input(Location(f"s3://{top}"))
    assert sorted(listing.uris.to_pylist()) == [f"s3://{top}/a.png", f"s3://{top}/sub/c.jfif"]
    assert listing.skipped["hidden"].count == 2 and listing.skipped["not_image"].count == 1
    fs.pipe(f"{bucket}/lists/list.txt", b"../photos [2023]/a.png\n")
    assert uris(f"s3://{bucket}/lists/list.txt") == [f"s3://{top}/a.png"]
    fs.pipe(f"{bucket}/lists/prompts.csv", b'image_uri,box\n"../photos [2023]/a.png","[1,1,9,9]"\n')
    found = read_prompts(
        Location(f"s3://{bucket}/lists/prompts.csv"), list_images(Location(f"s3://{top}"))
    )
    assert found.count == 1 and f"s3://{top}/a.png" in found.by_uri
    for split in ("train", "val"):  # YOLO's layout in a bucket
        fs.put_file(str(local), f"{bucket}/ds/images/{split}/000001.png")
        fs.pipe(f"{bucket}/ds/labels/{split}/000001.txt", b"0 0.5 0.5 0.2 0.2\n")
    found = read_prompts(
        Location(f"s3://{bucket}/ds/labels/val"), list_images(Location(f"s3://{bucket}/ds/images"))
    )
    assert list(found.by_uri) == [f"s3://{bucket}/ds/images/val/000001.png"]


def test_eval_pairs_ground_truth_file_names_by_the_same_rule():
    from pycocotools.coco import COCO

    from pipeline.results.evaluate import EvalError, match_images

    def truth(*names):
        gt = COCO()
        gt.dataset = {"images": [{"id": k, "file_name": n} for k, n in enumerate(names, 1)]}
        gt.createIndex()
        return gt

    run = {"/d/images/train/000001.png": 11, "/d/images/val/000001.png": 12, "/d/a.png": 13}
    assert match_images(truth("./a.png", "val\\000001.png"), run) == {1: 13, 2: 12}
    with pytest.raises(EvalError, match="fits 2 images"):
        match_images(truth("000001.png"), run)
