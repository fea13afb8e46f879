"""``autolabel view`` and ``autolabel tune`` in a real browser: Debian's Chromium, headless,
driven by Playwright, against the real servers on loopback (started as the CLI starts them).

Without Chromium these tests skip and say so, unless ``AUTOLABEL_REQUIRE_BROWSER`` is set
(``.ci/run`` sets it after installing the browser), where a missing browser fails them.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import load_config
from pipeline.core.imageio import load_image
from pipeline.core.storage import Location
from pipeline.model.factory import make_generator
from pipeline.model.registry import build_model, resolve_model
from pipeline.results.dataset import open_run
from pipeline.results.filters import MaskFilter, kept_scores
from tests.conftest import ROOT, autolabel

MODEL = "sam2-tiny-synthetic"
SCENES = ROOT / "samples" / "scenes" / "images"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    """Debian's Chromium, or skip (fail under CI) with the reason."""
    path = os.environ.get("AUTOLABEL_CHROMIUM") or shutil.which("chromium")
    if path:
        return path
    reason = "no chromium on this machine (apt-get install chromium, or make browser)"
    if os.environ.get("AUTOLABEL_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """Start ``autolabel ARGS`` (view or tune) and read the URL it prints."""
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()
    match = re.search(r"http://\S+/", line)
    if not match:
        server.kill()
        raise AssertionError(f"no URL printed: {line!r} {server.stderr.read()[-2000:]}")
    return server, match.group(0)


@pytest.fixture()
def serving() -> Iterator:
    """Start servers; stop them all after the test."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        server, url = start_server(*args)
        started.append(server)
        return url

    yield start
    for server in started:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The demo's run: the shipped scenes labelled by the shipped model, as ``make demo`` does."""
    out = tmp_path_factory.mktemp("web") / "demo-output"
    args = ["run", "--input", str(SCENES), "--output", str(out), "--no-progress"]
    result = autolabel(*args, f"model.name={MODEL}", "runtime.shard_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def kept_count(run: Path | str, **bounds) -> int:
    """Masks ``autolabel filter`` keeps, read back from the Parquet files."""
    return kept_scores(open_run(str(run)), MaskFilter(**bounds)).num_rows


def wait_ready(page, params: str) -> None:
    page.wait_for_selector(f'body[data-ready="{params}"]', timeout=30_000)


def move_slider(page, selector: str, steps: int) -> None:
    """Move a range input as a user does with the keyboard: focus, then arrow keys."""
    page.focus(selector)
    for _ in range(steps):
        page.keyboard.press("ArrowRight")


def thumbnails(page) -> dict[str, tuple[str, int]]:
    """image id → (thumbnail URL, kept masks shown in its caption)."""
    result = {}
    for tile in page.query_selector_all(".tile"):
        kept = int(tile.query_selector(".kept").inner_text().split("/")[0])
        result[tile.get_attribute("data-image-id")] = (
            tile.query_selector("img").get_attribute("src"),
            kept,
        )
    return result


def test_view_iou_slider_counts_what_the_filter_command_keeps(demo_run, page, serving, tmp_path):
    url = serving("view", str(demo_run))
    page.goto(url)
    wait_ready(page, "all")
    total = kept_count(demo_run)
    assert int(page.get_attribute("#run-count", "data-kept")) == total > 0
    before = thumbnails(page)

    move_slider(page, "#min_predicted_iou", 95)
    wait_ready(page, "min_predicted_iou=0.95")
    shown = int(page.get_attribute("#run-count", "data-kept"))
    assert shown == kept_count(demo_run, min_predicted_iou=0.95)
    assert 0 < shown < total, "the demo run has masks on both sides of 0.95"
    assert page.query_selector("#hist-predicted_iou line.cut"), "the threshold line is drawn"

    # The copied command, run as it is, keeps exactly the masks the page counted.
    page.click("#copy-command")
    command = page.evaluate("navigator.clipboard.readText()")
    argv = shlex.split(command)
    assert argv[:3] == ["autolabel", "filter", str(demo_run)] and "0.95" in argv
    argv[3] = str(tmp_path / "filtered")
    result = autolabel(*argv[1:])
    assert result.returncode == 0, result.stderr
    assert re.search(rf"kept {shown} of {total} masks", result.stdout), result.stdout
    assert open_run(str(tmp_path / "filtered")).masks.count_rows() == shown

    # The overlays follow the slider: an image that lost a mask gets a different picture.
    after = thumbnails(page)
    changed = [i for i in before if after[i][1] < before[i][1]]
    assert changed
    old, new = (page.request.get(url + side[changed[0]][0].lstrip("/")) for side in (before, after))
    assert old.ok and new.ok and old.body() != new.body()
    assert Image.open(io.BytesIO(new.body())).size == (256, 256)
    assert sum(kept for _, kept in after.values()) == int(
        page.get_attribute("#page-count", "data-kept")
    )
    page.screenshot(path=str(tmp_path / "view.png"))


def test_view_sorts_pages_and_shows_one_image_with_its_scores(demo_run, page, serving):
    url = serving("view", str(demo_run))
    page.goto(url)
    wait_ready(page, "all")
    page.select_option("#sort", "masks-desc")
    page.wait_for_function("document.querySelector('#page-label').textContent.includes('1 of')")
    page.wait_for_timeout(300)
    counts = [int(t.inner_text().split("/")[0]) for t in page.query_selector_all(".tile .kept")]
    assert counts == sorted(counts, reverse=True) and len(counts) == 8
    assert not page.query_selector_all('#sort option[value^="agreement"], .tile .agreement')

    page.click(".tile >> nth=0")
    page.wait_for_selector("#detail.open")
    paths = page.query_selector_all("#detail-svg path")
    assert len(paths) == counts[0]
    rows = page.query_selector_all("#detail-masks tr")
    assert len(rows) == counts[0]
    pointed = 0
    for path in paths:  # a mask not hidden under smaller ones shows its own scores
        point = path.evaluate(POINT_INSIDE)
        if point is None:
            continue
        pointed += 1
        page.mouse.move(*point)
        index = path.get_attribute("data-mask-index")
        tooltip = page.inner_text("#tooltip")
        assert tooltip.startswith(f"mask {index}: "), tooltip
        assert re.search(r"predicted IoU 0\.\d{3}, stability 0\.\d{3}, area \d+ px", tooltip)
        assert "active" in (path.get_attribute("class") or "")
    assert pointed >= max(2, len(paths) // 2)
    rows[0].hover()  # the table shows every mask, hidden or not, and highlights its outline
    index = rows[0].query_selector("td").inner_text()
    first = page.query_selector(f'#detail-svg path[data-mask-index="{index}"]')
    assert "active" in (first.get_attribute("class") or "")


def test_view_compare_opens_on_the_worst_agreeing_image_with_both_runs_masks(
    demo_run, page, serving, tmp_path
):
    """``view A --compare B`` with B the demo run filtered at its median predicted IoU: B's
    masks are A's own, so each image's agreement is the share of its masks B kept, and the
    masks B lacks are exactly A's unpaired ones."""
    scores = open_run(str(demo_run)).masks.to_table(columns=["predicted_iou"]).column(0)
    median = float(np.median(scores.to_numpy()))
    b = tmp_path / "b"
    done = autolabel("filter", str(demo_run), str(b), "--min-predicted-iou", f"{median:.4f}")
    assert done.returncode == 0, done.stderr[-2000:]
    counts = {}
    for run in (demo_run, b):
        ids = open_run(str(run)).masks.to_table(columns=["image_id"]).column(0).to_pylist()
        counts[run] = {str(i): ids.count(i) for i in set(ids)}
    images = open_run(str(demo_run)).images.to_table(columns=["image_id"]).column(0)
    assert {str(i) for i in images.to_pylist()} == set(counts[demo_run]), "masks on every image"
    share = {i: counts[b].get(i, 0) / n for i, n in counts[demo_run].items()}
    worst_first = sorted(share, key=lambda i: (share[i], int(i)))

    lone = autolabel("view", str(demo_run), "--iou", "0.7")
    assert lone.returncode == 2 and "--iou is for --compare B" in lone.stderr, lone.stderr
    page.goto(serving("view", str(demo_run), "--compare", str(b)))
    wait_ready(page, "all")
    assert page.input_value("#sort") == "agreement-asc"
    tiles = page.query_selector_all(".tile")
    shown = [float(t.query_selector(".agreement").get_attribute("data-agreement")) for t in tiles]
    assert [t.get_attribute("data-image-id") for t in tiles] == worst_first
    assert shown == pytest.approx([share[i] for i in worst_first]) and shown[0] < shown[-1]
    removed = sum(counts[demo_run].values()) - sum(counts[b].values())
    header = page.inner_text("#compare-summary")
    assert float(page.get_attribute("#compare-summary", "data-mean-iou")) == 1.0
    assert ", 0 only in B" in header and f"{removed} only in A" in header, header

    # The worst image that kept some masks: A's masks beside B's, A's unpaired ones marked.
    worst = next(i for i in worst_first if 0 < share[i] < 1)
    page.click(f'.tile[data-image-id="{worst}"]')
    page.wait_for_selector("#detail.open.compare")
    in_a, in_b = counts[demo_run][worst], counts[b].get(worst, 0)
    assert len(page.query_selector_all("#detail-svg path")) == in_a
    assert len(page.query_selector_all("#detail-svg path.only")) == in_a - in_b
    assert len(page.query_selector_all("#detail-svg-b path")) == in_b
    assert not page.query_selector_all("#detail-svg-b path.only")
    paired = page.query_selector_all("#detail-svg path[data-match]")
    assert len(paired) == in_b
    for path in paired:  # each pair shares one colour, its own
        partner = page.query_selector(
            f'#detail-svg-b path[data-mask-index="{path.get_attribute("data-match")}"]'
        )
        assert partner.get_attribute("style") == path.get_attribute("style")
    assert len({path.get_attribute("style") for path in paired}) == in_b
    assert f"{in_a - in_b} only in A" in page.inner_text("#compare-info")
    page.screenshot(path=str(tmp_path / "view-compare.png"))

    page.check("#overlay")  # one picture: B's masks filled, A's outlines over them
    page.wait_for_selector("#detail.overlaid")
    page.wait_for_function(
        f"document.querySelectorAll('#detail-svg path.outline').length === {in_a}"
    )
    assert page.is_hidden("#panel-b")
    assert len(page.query_selector_all("#detail-svg path:not(.outline)")) == in_b
    page.screenshot(path=str(tmp_path / "view-compare-overlay.png"))


# A point of the page where this SVG path is the topmost element and covers the pixel.
POINT_INSIDE = """(path) => {
  const box = path.getBBox(), matrix = path.getScreenCTM();
  for (let i = 1; i < 40; i++) for (let j = 1; j < 40; j++) {
    const point = new DOMPoint(box.x + (box.width * i) / 40, box.y + (box.height * j) / 40);
    if (!path.isPointInFill(point)) continue;
    const screen = point.matrixTransform(matrix);
    if (document.elementFromPoint(screen.x, screen.y) === path) return [screen.x, screen.y];
  }
  return null;
}"""


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def test_view_serves_nothing_outside_the_run(demo_run, serving):
    url = serving("view", str(demo_run))
    secret = (ROOT / "pyproject.toml").read_bytes()
    for path in (
        "/assets/../../../pyproject.toml",
        "/assets/..%2F..%2F..%2Fpyproject.toml",
        "/assets/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "/../pyproject.toml",
        "/etc/passwd",
        "/static/view.js",
        "/api/images/..%2F..%2Fpyproject.toml/image.png",
        "/api/images/123/image.png",
        f"/api/images/{demo_run}/image.png",
    ):
        status, body = raw_get(url, path)
        assert status in (400, 404, 422), (path, status)
        assert secret[:200] not in body and b"root:" not in body
    status, body = raw_get(url, "/api/summary?min_predicted_iou=2")
    assert status == 422
    status, body = raw_get(url, "/api/images?sort=../../x")
    assert status == 400 and b"sort must be one of" in body


def test_tune_runs_two_settings_and_copies_them_as_args_and_preset(page, serving, tmp_path):
    base = [f"model.name={MODEL}", "amg.points_per_side=8", "model.dtype=float32"]
    url = serving("tune", "--input", str(SCENES), "--sample", "2", *base)
    page.goto(url)
    page.wait_for_selector("body[data-ready]")
    assert page.input_value("#amg\\.points_per_side") == "8"

    page.click("#run")
    page.wait_for_selector('.try[data-try="1"]', timeout=120_000)
    page.fill("#amg\\.points_per_side", "16")
    page.fill("#amg\\.pred_iou_thresh", "0.9")
    page.click("#run")
    page.wait_for_selector('.try[data-try="2"]', timeout=120_000)
    latest, previous = page.query_selector_all(".try")
    assert latest.get_attribute("data-try") == "2" and previous.get_attribute("data-try") == "1"
    counts = {
        try_.get_attribute("data-try"): int(try_.query_selector(".masks").inner_text())
        for try_ in (latest, previous)
    }
    assert len(latest.query_selector_all("figure img")) == 2
    page.screenshot(path=str(tmp_path / "tune.png"))

    # The copied arguments and preset are the settings the page ran with: the job's own
    # generator with them finds the counts the page showed.
    page.click("#copy-args")
    args = shlex.split(page.evaluate("navigator.clipboard.readText()"))
    assert "amg.points_per_side=16" in args and "amg.pred_iou_thresh=0.9" in args
    preset = tmp_path / "tuned.yaml"
    page.click("#copy-preset")
    preset.write_text(page.evaluate("navigator.clipboard.readText()"))
    from_args = autolabel("config", *args)
    from_preset = autolabel("config", "--config", str(preset))
    assert from_args.returncode == 0 and from_args.stdout == from_preset.stdout
    assert counts["2"] == masks_with(load_config(str(preset)), 2)
    assert counts["1"] == masks_with(load_config(None, base), 2)


def masks_with(job, count: int) -> int:
    """Masks the job's generator finds on the first ``count`` scenes (as the tune page does)."""
    spec = resolve_model(job.model.name, job.model.config, job.model.checkpoint)
    generator = make_generator(build_model(spec, "cpu"), job.amg, job.generator, "float32", "cpu")
    total = 0
    for path in sorted(SCENES.iterdir())[:count]:
        pixels = load_image(Location(str(path)), job.image.max_short_side).pixels
        total += len(generator.generate(pixels))
    return total


def get_json(url: str) -> dict:
    status, body = raw_get(url, urlsplit(url).path + "?" + urlsplit(url).query)
    assert status == 200, body[:500]
    return json.loads(body)


@pytest.mark.usefixtures("ray_local")
@pytest.mark.slow
def test_view_and_tune_over_object_storage(s3, serving):
    """A run made in a bucket from images in the bucket: both pages read them over S3."""
    import urllib.request

    from pipeline.job.runner import execute, plan_run

    fs, bucket = s3
    for path in sorted(SCENES.iterdir())[:3]:
        fs.put_file(str(path), f"{bucket}/scenes/{path.name}")
    job = load_config(None, [f"model.name={MODEL}", "runtime.shard_size=2"])
    source, output = Location(f"s3://{bucket}/scenes"), Location(f"s3://{bucket}/run")
    assert execute(plan_run(job, source, output, overwrite=False), show_progress=False).succeeded

    url = serving("view", f"s3://{bucket}/run")
    summary = get_json(url + "api/summary?min_stability_score=0.97")
    assert summary["kept_masks"] == kept_count(f"s3://{bucket}/run", min_stability_score=0.97)
    assert summary["masks"] == kept_count(f"s3://{bucket}/run") > summary["kept_masks"] > 0
    assert summary["command"].startswith(f"autolabel filter s3://{bucket}/run ")
    first = get_json(url + "api/images?sort=masks-desc")["images"][0]
    status, body = raw_get(url, f"/api/images/{first['image_id']}/thumb.png")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (256, 256)
    detail = get_json(url + f"api/images/{first['image_id']}/masks")
    assert len(detail["masks"]) == first["kept"] > 0

    url = serving(
        "tune",
        "--input",
        f"s3://{bucket}/scenes",
        "--sample",
        "2",
        f"model.name={MODEL}",
        "amg.points_per_side=8",
    )
    request = urllib.request.Request(
        url + "api/tries",
        data=json.dumps({"settings": {"amg.pred_iou_thresh": 0.85}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    attempt = json.loads(urllib.request.urlopen(request, timeout=300).read())
    assert [image["name"] for image in attempt["images"]] == [
        "scene_90210_00000.png",
        "scene_90210_00001.png",
    ]
    assert attempt["args"].endswith("amg.pred_iou_thresh=0.85")
    status, body = raw_get(url, "/api/tries/1/0.png")
    assert status == 200 and np.asarray(Image.open(io.BytesIO(body))).shape == (256, 256, 3)


@pytest.fixture(scope="module")
def prompted_run(tmp_path_factory) -> Path:
    """The shipped scenes labelled from their ground-truth boxes, one category per shape."""
    folder = tmp_path_factory.mktemp("prompted")
    coco = json.loads((SCENES.parent / "annotations.json").read_text())
    shapes = sorted({annotation["shape"] for annotation in coco["annotations"]})
    coco["categories"] = [{"id": i + 1, "name": shape} for i, shape in enumerate(shapes)]
    for annotation in coco["annotations"]:
        annotation["category_id"] = shapes.index(annotation["shape"]) + 1
    (folder / "boxes.json").write_text(json.dumps(coco))
    out = folder / "run"
    args = ["run", "--input", str(SCENES), "--output", str(out), "--no-progress"]
    result = autolabel(*args, "--prompts", str(folder / "boxes.json"), f"model.name={MODEL}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_view_filters_a_prompted_run_by_category_and_box_iou(prompted_run, page, serving, tmp_path):
    page.goto(serving("view", str(prompted_run)))
    wait_ready(page, "all")
    assert page.is_visible("#box-iou-control") and page.is_visible("#category-control")
    boxes = page.query_selector_all("#categories input")
    assert len(boxes) == 6  # ellipse, polygon, rectangle, bar, ring, star

    boxes[0].uncheck()  # "bar"
    wait_ready(page, "categories=2%2C3%2C4%2C5%2C6")
    # a cut between the masks' box IoUs (the median's hundredth), so that some stay and some go
    table = open_run(str(prompted_run)).masks.to_table(columns=["box_iou", "category_id"])
    ious = sorted(i for i, c in zip(*table.to_pydict().values(), strict=True) if c != 1)
    cut = int(ious[len(ious) // 2] * 100)
    assert cut > 0 and ious[0] < cut / 100
    move_slider(page, "#min_box_iou", cut)
    wait_ready(page, f"min_box_iou={cut / 100:.2f}&categories=2%2C3%2C4%2C5%2C6")
    shown = int(page.get_attribute("#run-count", "data-kept"))
    where = f"box_iou >= {cut / 100:g} and category_id in [2, 3, 4, 5, 6]"
    assert shown == kept_count(prompted_run, where=where)
    assert 0 < shown < kept_count(prompted_run, where="category_id in (2, 3, 4, 5, 6)")
    assert page.query_selector("#hist-box_iou line.cut")

    argv = shlex.split(page.inner_text("#command"))
    assert argv[argv.index("--where") + 1] == where
    argv[3] = str(tmp_path / "filtered")
    result = autolabel(*argv[1:])
    assert result.returncode == 0 and f"kept {shown} of " in result.stdout, result.stderr
    kept = open_run(str(tmp_path / "filtered")).masks.to_table(columns=["category_name"])
    assert "bar" not in kept.column("category_name").to_pylist()


def loaded_pictures(page, selector: str) -> list[dict]:
    """The pictures ``selector`` picks: source, whether loaded, and natural width (0: broken)."""
    return page.eval_on_selector_all(
        selector, "els => els.map(e => ({src: e.src, ok: e.complete, width: e.naturalWidth}))"
    )


def test_view_shows_a_placeholder_for_an_image_that_has_gone(page, serving, tmp_path):
    """A run whose image was deleted afterwards: its tile shows a placeholder (not a broken
    picture from an HTTP 500) and the other tiles their overlays."""
    from benchmarks.synthetic_run import write_synthetic_run

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for source in sorted(SCENES.glob("*.png"))[:3]:
        shutil.copy(source, scenes / source.name)
    run = tmp_path / "run"
    write_synthetic_run(str(run), images=3, masks_per_image=4, scenes=scenes)
    sorted(scenes.glob("*.png"))[1].unlink()
    url = serving("view", str(run))
    page.goto(url)
    wait_ready(page, "all")
    page.wait_for_function("[...document.querySelectorAll('.tile img')].every(i => i.complete)")
    pictures = loaded_pictures(page, ".tile img")
    assert len(pictures) == 3 and all(p["ok"] and p["width"] > 0 for p in pictures), pictures
    bodies = [page.request.get(p["src"]) for p in pictures]
    assert all(b.status == 200 and b.headers["content-type"] == "image/png" for b in bodies)
    pixels = [np.asarray(Image.open(io.BytesIO(b.body())).convert("RGB")) for b in bodies]
    card = [float((p == (70, 70, 70)).all(axis=2).mean()) for p in pixels]  # the grey card
    assert card[1] > 0.8 and card[0] < 0.5 and card[2] < 0.5, card
    page.screenshot(path=str(tmp_path / "view-gone.png"))


def test_tune_labels_the_others_and_shows_a_broken_samples_error(page, serving, tmp_path):
    folder = tmp_path / "sample"
    folder.mkdir()
    for source in sorted(SCENES.glob("*.png"))[:2]:
        shutil.copy(source, folder / source.name)
    (folder / "broken.png").write_bytes(b"not a png at all")
    base = [f"model.name={MODEL}", "amg.points_per_side=8", "model.dtype=float32"]
    url = serving("tune", "--input", str(folder), "--sample", "3", *base)
    page.goto(url)
    page.wait_for_selector("body[data-ready]")
    page.click("#run")
    page.wait_for_selector('.try[data-try="1"]', timeout=120_000)
    captions = [c.inner_text() for c in page.query_selector_all('.try[data-try="1"] figcaption')]
    assert len(captions) == 3
    broken = [c for c in captions if c.startswith("broken.png")]
    assert broken == [
        "broken.png: not labelled: cannot decode image: not an image format Pillow reads"
    ], captions
    labelled = [c for c in captions if not c.startswith("broken.png")]
    assert all(re.fullmatch(r"\S+\.png: [1-9]\d* masks, \d+ ms", c) for c in labelled), captions
    assert page.query_selector('.try[data-try="1"] figcaption.error-text')
    page.wait_for_function("[...document.querySelectorAll('figure img')].every(i => i.complete)")
    pictures = loaded_pictures(page, '.try[data-try="1"] figure img')
    assert len(pictures) == 3 and all(p["ok"] and p["width"] > 0 for p in pictures), pictures
    page.screenshot(path=str(tmp_path / "tune-broken.png"))
