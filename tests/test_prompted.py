"""Prompted masks (boxes, clicks) equal SAM2ImagePredictor.predict, prompt by prompt."""

import numpy as np
import pytest
import torch

from pipeline.core import rle
from pipeline.core.config import load_config
from pipeline.core.prompt import Prompt
from pipeline.model.prompted import PromptedGenerator
from pipeline.model.records import fix_feature_sizes
from pipeline.model.registry import build_model, resolve_model
from pipeline.synthetic.scenes import make_scene


@pytest.fixture(scope="module")
def model():
    return build_model(resolve_model("sam2-tiny-synthetic", None, None), "cpu")


def alone(predictor, prompt: Prompt, width: int, height: int):
    """What sam2's predictor gives for one prompt: (binary mask, predicted IoU)."""
    kwargs = {}
    if prompt.box is not None:
        x, y, w, h = prompt.box
        kwargs["box"] = np.array([max(0, x), max(0, y), min(width, x + w), min(height, y + h)])
    if prompt.points:
        kwargs["point_coords"] = np.array(prompt.points, dtype=np.float32)
        kwargs["point_labels"] = np.array(prompt.point_labels)
    multimask = prompt.box is None and len(prompt.points) == 1
    masks, iou, _ = predictor.predict(multimask_output=multimask, **kwargs)
    return masks[int(iou.argmax())].astype(bool), float(iou.max())


def test_prompted_masks_equal_the_predictor_one_prompt_at_a_time(model):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    scene = make_scene(31_337, 256, 1.0)
    first, second = scene.masks[0], scene.masks[1]
    ys, xs = np.nonzero(first)
    box = (float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1))
    click = (float(xs[len(xs) // 2]), float(ys[len(ys) // 2]))
    ys2, xs2 = np.nonzero(second)
    elsewhere = (float(xs2[0]), float(ys2[0]))
    prompts = [
        Prompt(box=box, category_name="thing", source_id="1"),
        Prompt(points=(click,), point_labels=(1,)),
        Prompt(points=(click, elsewhere), point_labels=(1, 0)),
        Prompt(box=(200.0, 200.0, 100.0, 100.0)),  # half outside: clipped
        Prompt(box=(-50.0, 10.0, 20.0, 20.0)),  # wholly outside: no area
        Prompt(box=(10.0, 10.0, 0.0, 5.0)),  # zero width
        Prompt(box=(box[0] / 256, box[1] / 256, box[2] / 256, box[3] / 256), normalized=True),
    ]
    amg = load_config(None, ["amg.min_mask_region_area=0"]).amg
    results = PromptedGenerator(model, amg, batch=2).generate(scene.image, prompts)
    assert results[4] == results[5] == "the prompt's box has no area inside the image"
    predictor = SAM2ImagePredictor(model)
    fix_feature_sizes(predictor)
    with torch.inference_mode():
        predictor.set_image(scene.image)
        for index in (0, 1, 2, 3, 6):
            prompt = prompts[index].in_pixels(256, 256)
            mask, iou = alone(predictor, prompt, 256, 256)
            record = results[index]
            assert isinstance(record, dict), record
            assert np.array_equal(rle.decode(record["segmentation"]).astype(bool), mask), index
            assert record["predicted_iou"] == pytest.approx(iou, abs=1e-4)
            assert record["area"] == int(mask.sum()) and 0 <= record["stability_score"] <= 1
    assert results[6]["segmentation"] == results[0]["segmentation"]  # YOLO-style = pixels
    clicked = rle.decode(results[1]["segmentation"]).astype(bool)
    assert (clicked & first).sum() / (clicked | first).sum() > 0.5, "a click finds its object"
