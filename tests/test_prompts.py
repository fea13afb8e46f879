"""Prompts from a detection dataset (COCO JSON, YOLO labels, a table), matched to images."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location
from pipeline.job.prompts import PromptsError
from pipeline.job.sources import list_images
from tests.conftest import make_scene, read_prompts


@pytest.fixture()
def images(tmp_path):
    """Four scenes, one in a subfolder; the listed images."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for index, name in enumerate(["a.png", "b.png", "c.jpg", "sub/d.png"]):
        make_scene(80, 60, seed=index).save(folder / name)
    return folder, list_images(Location(str(folder)))


def coco_file(path, annotations, images):
    document = {
        "images": [{"id": i, "file_name": name} for i, name in images],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
    }
    path.write_text(json.dumps(document))
    return Location(str(path))


def test_coco_boxes_keep_categories_and_ids_and_unmatched_ones_are_counted(images, tmp_path):
    folder, refs = images
    source = coco_file(
        tmp_path / "instances.json",
        [
            {"id": 11, "image_id": 1, "bbox": [5, 6, 20, 10], "category_id": 3},
            {"id": 12, "image_id": 2, "bbox": [1, 2, 3, 4], "category_id": 5, "score": 0.7},
            {"id": 13, "image_id": 9, "bbox": [1, 2, 3, 4], "category_id": 5},
        ],
        [(1, "a.png"), (2, "sub/d.png"), (9, "elsewhere/zzz.png"), (4, "b.png")],
    )
    found = read_prompts(source, refs)
    assert found.by_uri[str(folder / "a.png")] == [
        Prompt(box=(5.0, 6.0, 20.0, 10.0), category_id=3, category_name="cat", source_id="11")
    ]
    [dog] = found.by_uri[str(folder / "sub" / "d.png")]
    assert (dog.category_name, dog.source_id, dog.score) == ("dog", "12", 0.7)
    assert found.unmatched == 1 and found.unmatched_examples == ["elsewhere/zzz.png"]
    assert found.count == 2 and str(folder / "b.png") not in found.by_uri  # listed, no prompts


def test_yolo_labels_are_matched_by_stem_and_scaled_to_the_image(images, tmp_path):
    folder, refs = images
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("person\ncar\n")
    (labels / "c.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.1 0.2 0.1 0.2 0.9\n")
    (labels / "nothere.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    found = read_prompts(Location(str(labels)), refs)
    car, person = found.by_uri[str(folder / "c.jpg")]
    assert (car.category_id, car.category_name, person.score) == (1, "car", 0.9)
    assert car.in_pixels(80, 60).box == pytest.approx((30.0, 15.0, 20.0, 30.0))
    assert found.unmatched == 1


def test_tables_give_boxes_and_clicks_by_image_uri(images, tmp_path):
    folder, refs = images
    a, b = str(folder / "a.png"), str(folder / "b.png")
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text(
        "image_uri,box,points,point_labels,category_name,source_id\n"
        f'{a},"[1, 2, 30, 40]",,,cup,7\n'
        f'{b},,"[[10, 12], [40, 30]]","[1, 0]",,\n'
    )
    found = read_prompts(Location(str(csv_path)), refs)
    cup = Prompt(box=(1.0, 2.0, 30.0, 40.0), category_name="cup", source_id="7")
    assert found.by_uri[a] == [cup]
    [clicks] = found.by_uri[b]
    assert clicks.points == ((10.0, 12.0), (40.0, 30.0)) and clicks.point_labels == (1, 0)
    table = pa.table({"image_uri": [a], "x": [1.0], "y": [2.0], "w": [3.0], "h": [4.0]})
    pq.write_table(table, tmp_path / "prompts.parquet")
    found = read_prompts(Location(str(tmp_path / "prompts.parquet")), refs)
    assert found.by_uri[a][0].box == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", '{"images": []}', "not a COCO instances file"),
        ("broken.json", "{not json", "cannot read prompts"),
        (
            "nan.json",
            '{"images": [{"id": 1, "file_name": "a.png"}], '
            '"annotations": [{"id": 1, "image_id": 1, "bbox": [NaN, 1, 2, 3]}]}',
            "NaN and Infinity are not",
        ),
        ("rows.csv", "image_uri,category_name\nx.png,cup\n", "has neither a box nor points"),
        ("labels/a.txt", "0 0.5 half 0.1 0.1\n", "a.txt:1: expected 'class cx cy w h'"),
        ("missing.json", None, "prompts not found"),
    ],
)
def test_a_malformed_prompts_file_is_a_one_line_error(images, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.parent.mkdir(exist_ok=True)
        path.write_text(content)
    source = path.parent if name.startswith("labels/") else path
    with pytest.raises(PromptsError, match=message) as error:
        read_prompts(Location(str(source)), images[1])
    assert "\n" not in str(error.value)
