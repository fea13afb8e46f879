"""sam2-tiny-synthetic, the model trained here: it follows its prompt, the whole job labels
unseen scenes with it, both generators agree on its masks, and its training code works."""

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from pipeline.core import rle
from pipeline.core.config import load_config
from pipeline.model.fast import FastMaskGenerator
from pipeline.model.parity import Parity
from pipeline.model.reference import MaskGenerator
from pipeline.model.registry import SHIPPED_MODELS, build_model, resolve_model
from pipeline.results.dataset import decode_mask, open_run
from pipeline.results.evaluate import evaluate_run
from pipeline.synthetic.scenes import make_scene, write_dataset
from tests.conftest import autolabel
from training.train import (
    Recipe,
    box_conditioning,
    click_losses,
    held_out_scenes,
    init_cross_attention,
    iou_head_loss,
    main,
    make_batch,
    point_conditioning,
    stability_loss,
    train,
)

MODEL = "sam2-tiny-synthetic"
UNSEEN_SEED = 2027  # a dataset seed the training stream never drew


@pytest.fixture(scope="module")
def trained_model():
    return build_model(resolve_model(MODEL, None, None), "cpu")


def test_shipped_checkpoint_is_the_official_layout():
    config, checkpoint = SHIPPED_MODELS[MODEL]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert set(state) == {"model"}
    spec = resolve_model(MODEL, None, None)
    assert (spec.config, spec.checkpoint, spec.name) == (config, checkpoint, MODEL)


def test_trained_model_follows_its_prompt(trained_model):
    """Held-out hard scenes, one click per object: the chosen mask is the clicked object."""
    scores = point_conditioning(trained_model, held_out_scenes(256, count=12))
    # 0.86 and 0.63 kept by the default thresholds; the 256-px model before it: 0.76 and 0.39
    assert scores["prompted"] >= 0.8
    assert scores["prompted"] >= 5 * scores["other"]
    assert scores["kept"] >= 0.5, "the IoU head and stability score pass most clicks' masks"


@pytest.mark.slow
def test_run_on_unseen_scenes_with_the_default_preset(tmp_path):
    """The whole job through Ray, default preset: masks look like the scenes' objects."""
    scenes = tmp_path / "scenes"
    write_dataset(str(scenes), 8, seed=UNSEEN_SEED)
    out = tmp_path / "run"
    args = ["run", "--input", str(scenes / "images"), "--output", str(out)]
    result = autolabel(*args, f"model.name={MODEL}", "runtime.shard_size=4")
    assert result.returncode == 0, result.stderr
    masks = open_run(str(out)).masks.to_table().to_pylist()
    assert len(masks) >= 8
    for row in masks:
        assert row["predicted_iou"] >= 0.8 and row["stability_score"] >= 0.95
        assert row["area"] == int(decode_mask(row).sum())
    report = evaluate_run(str(out), str(scenes / "annotations.json"))
    assert report["images"] == 8
    # The 256-px model before the 512-px fine-tune gave AR@100 0.58, AP 0.33 here; this one
    # 0.76, 0.46, and small objects (under 32² px) AR 0.58.
    assert report["metrics"]["AR@100"] >= 0.65, report["metrics"]
    assert report["metrics"]["AR_small"] >= 0.45, report["metrics"]
    assert report["metrics"]["AP"] >= 0.35, report["metrics"]


def test_fast_matches_reference_at_default_thresholds(trained_model):
    """sam2's generator and ours on unseen scenes at the default preset's thresholds."""
    amg = load_config(None, ["model.dtype=float32"]).amg
    reference, fast = MaskGenerator(trained_model, amg), FastMaskGenerator(trained_model, amg)
    parity = Parity()
    for index in range(2):
        image = make_scene(UNSEEN_SEED * 1_000_003 + 100 + index, 256, 1.0).image
        parity.add(reference.generate(image), fast.generate(image))
    assert parity.reference_masks >= 4, "the default thresholds must keep masks"
    assert parity.count_mismatches == 0
    assert parity.mean_iou > 0.999
    assert parity.max_predicted_iou_diff < 1e-4


def test_batches_depend_only_on_seed_and_step():
    recipe = Recipe(scenes_per_step=2, prompts_per_scene=6, boxes_per_scene=2, pixels_per_scene=5)
    first, again = make_batch(recipe, 3, 17), make_batch(recipe, 3, 17)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["images"], make_batch(recipe, 3, 18)["images"])
    owners, points, targets = first["owners"], first["points"], first["point_targets"]
    for scene in range(2):
        for (x, y), target in zip(points[scene].astype(int), targets[scene], strict=True):
            assert owners[scene, y, x] == target, "a click lies on the object it prompts"
        boxes = zip(first["boxes"][scene], first["box_targets"][scene], strict=True)
        for box, target in boxes:
            ys, xs = np.nonzero(owners[scene] == target)
            exact = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert np.abs(box - exact).max() <= 20, "box jitter is at most 20 px"


def test_click_losses_reward_the_prompted_object_only():
    """Logits that cover the target pass; logits that cover everything (point-independent) fail."""
    size, target = 16, torch.zeros(16, 16, dtype=torch.bool)
    target[2:8, 2:8] = True
    clicks = torch.tensor([[[4.0, 4.0], [6.0, 3.0], [12.0, 12.0], [3.0, 13.0]]])
    inside = torch.tensor([[True, True, False, False]])
    right = (target.float() * 20 - 10)[None, None].expand(1, 4, 16, 16)
    everything = torch.full((1, 4, 16, 16), 10.0)
    own, other = click_losses(right, clicks, inside, size)
    assert own < 1e-3 and other < 1e-3
    own, other = click_losses(everything, clicks, inside, size)
    assert own < 1e-3 and other > 5


def test_small_object_terms_reward_sharp_edges_and_weigh_small_objects():
    """The stability loss is near 0 for a mask with steep edges and large for a soft one (the
    generator's filter would drop it); the IoU head's error on a small object weighs more."""
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    distance = 5.5 - ((ys - 30) ** 2 + (xs - 30) ** 2).sqrt()  # + inside a disc of 5.5 px
    targets = (distance > 0).float()[None]
    sharp, soft = (distance * 20)[None, None], (distance * 0.5)[None, None]
    assert stability_loss(sharp, targets) < 0.05 < 0.4 < stability_loss(soft, targets)
    big = torch.zeros(1, 64, 64)
    big[0, 8:56, 8:56] = 1
    both = torch.cat([targets, big])
    errors = torch.tensor([[0.5], [0.9]]), torch.tensor([[0.9], [0.9]])  # wrong on the small one
    plain = iou_head_loss(*errors, both, Recipe(size=64, loss_size=64))
    weighted = iou_head_loss(*errors, both, Recipe(size=64, loss_size=64, small_iou_weight=3.0))
    assert torch.isclose(plain, torch.tensor(0.16 / 2))
    assert torch.isclose(weighted, torch.tensor(0.16 * 4 / 5))


def test_cross_attention_init_gives_equal_orthonormal_q_and_k():
    model = build_model(resolve_model(MODEL, None, None), "cpu")
    init_cross_attention(model, 2.0, torch.Generator().manual_seed(0))
    attention = model.sam_mask_decoder.transformer.layers[0].cross_attn_token_to_image
    q, k = attention.q_proj.weight, attention.k_proj.weight
    assert torch.equal(q, k)
    assert torch.allclose(q @ q.T, 4 * torch.eye(q.shape[0]), atol=1e-4)


def test_training_writes_a_loadable_checkpoint_and_resumes(tmp_path):
    """Two steps, then two more from state.pt: the log continues and the model loads in sam2.
    Resuming at another input size than the run's is refused, not silently continued."""
    recipe = Recipe(scenes_per_step=1, prompts_per_scene=4, pixels_per_scene=4, loss_size=64)
    out = tmp_path / "train"
    train(str(out), recipe, steps=2, eval_every=2)
    train(str(out), recipe, steps=4, eval_every=2)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == 4
    assert run["recipe"]["input_size"] == 512, "run.json names the size the config gave"
    with pytest.raises(SystemExit, match="--input-size 512"):
        train(str(out), replace(recipe, input_size=256), steps=6, eval_every=2)
    # a state saved before states recorded their size: refused unless the size is given
    state = torch.load(out / "state.pt", weights_only=False)
    del state["input_size"]
    torch.save(state, out / "state.pt")
    with pytest.raises(SystemExit, match="does not record its input size"):
        train(str(out), recipe, steps=5, eval_every=5)
    train(str(out), replace(recipe, input_size=512), steps=5, eval_every=5)
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 5
    config = SHIPPED_MODELS[MODEL][0]
    model = build_model(resolve_model(None, config, str(out / "last.pt")), "cpu")
    assert next(model.parameters()).isfinite().all()


def test_training_can_start_from_the_shipped_model(tmp_path):
    """``--init``: the run starts from the shipped weights (no fresh init, no q/k init), says
    so in run.json, and measures box prompts on the held-out scenes beside clicks."""
    config, checkpoint = SHIPPED_MODELS[MODEL]
    recipe = Recipe(scenes_per_step=1, prompts_per_scene=4, boxes_per_scene=2, loss_size=64)
    out = tmp_path / "finetune"
    train(str(out), recipe, steps=1, eval_every=1, config=config, init=checkpoint)
    assert json.loads((out / "run.json").read_text())["init"] == checkpoint
    [record] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"prompted", "box_tight", "box_jittered"} <= set(record["held_out"])
    shipped = build_model(resolve_model(MODEL, None, None), "cpu").state_dict()
    tuned = build_model(resolve_model(None, config, str(out / "last.pt")), "cpu").state_dict()
    # one small step away from the shipped weights, not a fresh initialisation
    key = "sam_mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"
    assert (tuned[key] - shipped[key]).abs().max() < 0.01
    assert not torch.equal(tuned[key], shipped[key])


def test_training_at_another_input_size_with_the_image_encoder_frozen(tmp_path):
    """``--input-size``: the model is built at that input size (scenes resized, prompts scaled);
    ``--freeze-encoder``: a step moves the decoder and leaves the image encoder as it was."""
    config, checkpoint = SHIPPED_MODELS[MODEL]
    recipe = Recipe(
        scenes_per_step=1,
        prompts_per_scene=4,
        boxes_per_scene=2,
        size=64,
        input_size=128,
        loss_size=64,
        freeze_encoder=True,
    )
    out = tmp_path / "frozen"
    with pytest.raises(SystemExit):  # a boolean option takes true/false, not any word
        main(["--out", str(out), "--steps", "1", "--freeze-encoder", "on"])
    assert not out.exists()
    train(str(out), recipe, steps=1, eval_every=1, config=config, init=checkpoint)
    assert torch.load(out / "state.pt", weights_only=False)["input_size"] == 128
    shipped = build_model(resolve_model(MODEL, None, None), "cpu").state_dict()
    tuned = build_model(resolve_model(None, config, str(out / "last.pt")), "cpu").state_dict()
    encoder = [key for key in shipped if key.startswith("image_encoder.")]
    assert encoder and all(torch.equal(tuned[key], shipped[key]) for key in encoder)
    key = "sam_mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"
    assert not torch.equal(tuned[key], shipped[key])


def test_box_measure_is_what_run_prompts_gives(trained_model):
    """The training's held-out box measure scores the mask ``autolabel run --prompts`` makes
    for each object's tight box with zooming off, the model's own whole-image mask
    (``PromptedGenerator``, masks decoded with pycocotools)."""
    from pipeline.core import rle
    from pipeline.core.prompt import Prompt
    from pipeline.model.prompted import PromptedGenerator

    scenes = held_out_scenes(256, count=4)
    measured = box_conditioning(trained_model, scenes)
    unzoomed = load_config(None, ["prompts.zoom_below=0"])  # the model's own, whole-image masks
    generator = PromptedGenerator(trained_model, unzoomed.amg, zoom=unzoomed.prompts)
    ious = []
    for scene in scenes:
        prompts = []
        for mask in scene.masks:
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1))
            prompts.append(Prompt(box=box))
        for mask, record in zip(scene.masks, generator.generate(scene.image, prompts), strict=True):
            # a prompt without a mask (an error string) scores 0; masks decoded by pycocotools
            got = rle.decode(record["segmentation"]) if isinstance(record, dict) else mask * 0
            got = got.astype(bool)
            ious.append((got & mask).sum() / max((got | mask).sum(), 1))
    assert abs(measured["box_tight"] - float(np.mean(ious))) < 0.02, (measured, np.mean(ious))
    assert measured["box_jittered"] >= 0.7, "issue 21's bar for boxes jittered by SAM's rule"


def test_a_detections_file_of_boxes_becomes_masks_of_their_objects(tmp_path):
    """Issue 21's bar: unseen scenes' own boxes, as a COCO detections file through
    ``run --prompts`` with the default settings, give masks whose mean IoU with the objects
    (``autolabel eval``) is at least 0.75; one click per object stays as good."""
    scenes = tmp_path / "scenes"
    write_dataset(str(scenes), 8, seed=UNSEEN_SEED)
    gt = scenes / "annotations.json"
    truth = json.loads(gt.read_text())
    clicks = tmp_path / "clicks.csv"
    rows = ["image_uri,points,point_labels,source_id"]
    names = {image["id"]: image["file_name"] for image in truth["images"]}
    annotations = {}
    for ann in truth["annotations"]:  # a click on each object's innermost pixel
        mask = rle.decode(rle.as_pycocotools(ann["segmentation"])).astype(np.uint8)
        annotations[ann["id"]] = mask.astype(bool)
        inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(inside.argmax()), inside.shape)
        uri = scenes / "images" / names[ann["image_id"]]
        rows.append(f'{uri},"[[{x}, {y}]]","[1]",{ann["id"]}')
    clicks.write_text("\n".join(rows) + "\n")
    scores = {}
    for kind, prompts in (("boxes", gt), ("clicks", clicks)):
        out = tmp_path / kind
        args = ["run", "--input", str(scenes / "images"), "--prompts", str(prompts)]
        result = autolabel(*args, "--output", str(out), f"model.name={MODEL}", "--no-progress")
        assert result.returncode == 0, result.stderr
        ious = []  # each mask against the annotation it was prompted for, pycocotools-decoded
        for row in open_run(str(out)).masks.to_table().to_pylist():
            truth_mask = annotations[int(row["source_id"])]
            got = rle.decode(row["segmentation"]).astype(bool)
            ious.append((got & truth_mask).sum() / (got | truth_mask).sum())
        scores[kind] = sum(ious) / len(annotations)  # a prompt without a mask counts 0
    shown = autolabel("eval", str(tmp_path / "boxes"), "--gt", str(gt), "--out", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["prompted"]["mean_iou"] == pytest.approx(scores["boxes"], abs=1e-6)
    assert scores["boxes"] >= 0.75, scores
    assert scores["clicks"] >= 0.75, scores


def test_eval_scores_each_prompt_against_the_annotation_that_prompted_it(tmp_path):
    """``autolabel eval`` of a run prompted by the ground truth's own boxes: each mask against
    its source annotation (pycocotools-decoded), every prompt counted, printed as a row."""
    from pipeline.core import rle

    scenes = tmp_path / "scenes"
    write_dataset(str(scenes), 3, seed=UNSEEN_SEED)
    gt = scenes / "annotations.json"
    out = tmp_path / "boxes"
    args = ["run", "--input", str(scenes / "images"), "--prompts", str(gt), "--output", str(out)]
    result = autolabel(*args, f"model.name={MODEL}", "--no-progress")
    assert result.returncode == 0, result.stderr
    shown = autolabel("eval", str(out), "--gt", str(gt), "--out", str(tmp_path / "eval"))
    assert shown.returncode == 0, shown.stderr
    assert "prompts: mean IoU with their annotation" in shown.stdout
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    annotations = {a["id"]: a for a in json.loads(gt.read_text())["annotations"]}
    masks = open_run(str(out)).masks.to_table().to_pylist()
    ious = []
    for row in masks:
        truth = annotations[int(row["source_id"])]
        got = rle.decode(row["segmentation"]).astype(bool)
        want = rle.decode(rle.as_pycocotools(truth["segmentation"])).astype(bool)
        ious.append((got & want).sum() / (got | want).sum())
    assert report["prompted"]["prompts"] == len(annotations)
    assert report["prompted"]["masks"] == len(masks)
    assert report["prompted"]["mean_iou"] == pytest.approx(sum(ious) / len(annotations), abs=1e-6)
