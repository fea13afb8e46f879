"""Screenshots of the two pages for the README, taken in headless Chromium like the tests.

    make demo && .venv/bin/python docs/screenshots.py [--only compare]

Starts ``autolabel view demo-output`` and ``autolabel tune`` on the sample scenes, sets a
threshold and tries two settings, and writes ``docs/view_page.png``, ``docs/view_detail.png``
and ``docs/tune_page.png``; then ``autolabel view demo-output --compare demo-output-boxes``
(the automatic run against the box-prompted one) and writes ``docs/view_compare.png``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def start(*args: str) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    return server, re.search(r"http://\S+/", server.stdout.readline()).group(0)


def compare_screenshot(browser) -> None:
    """``view --compare``: a badly agreeing image of the automatic run and the boxes run."""
    server, url = start("view", "demo-output", "--compare", "demo-output-boxes")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.goto(url)
        page.wait_for_selector('body[data-ready="all"]')
        # Of the four least agreeing images, the one with the most masks in A.
        masks = [
            int(t.inner_text().split("/")[1].split()[0])
            for t in page.query_selector_all(".tile .kept")
        ]
        busiest = max(range(min(4, len(masks))), key=lambda i: (masks[i], -i))
        page.click(f".tile >> nth={busiest}")
        page.wait_for_selector("#detail.open.compare")
        page.mouse.move(1200, 800)  # off the pictures: no tooltip in the shot
        page.wait_for_timeout(500)
        page.screenshot(path=str(ROOT / "docs" / "view_compare.png"))
    finally:
        server.terminate()


def main() -> None:
    if sys.argv[1:] == ["--only", "compare"]:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            compare_screenshot(browser)
            browser.close()
        return
    view, view_url = start("view", "demo-output")
    tune, tune_url = start(
        "tune", "--input", "samples/scenes/images", "--sample", "3",
        "model.name=sam2-tiny-synthetic", "amg.points_per_side=16",
    )  # fmt: skip
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.goto(view_url)
            page.wait_for_selector('body[data-ready="all"]')
            page.focus("#min_predicted_iou")
            for _ in range(95):
                page.keyboard.press("ArrowRight")
            page.wait_for_selector('body[data-ready="min_predicted_iou=0.95"]')
            page.wait_for_timeout(500)
            page.screenshot(path=str(ROOT / "docs" / "view_page.png"))
            page.click(".tile >> nth=0")
            page.wait_for_selector("#detail.open")
            page.hover("#detail-masks tr >> nth=1")
            page.wait_for_timeout(300)
            page.screenshot(path=str(ROOT / "docs" / "view_detail.png"))

            page.goto(tune_url)
            page.wait_for_selector("body[data-ready]")
            page.click("#run")
            page.wait_for_selector('.try[data-try="1"]', timeout=300_000)
            page.fill("#amg\\.points_per_side", "32")
            page.fill("#amg\\.stability_score_thresh", "0.9")
            page.click("#run")
            page.wait_for_selector('.try[data-try="2"]', timeout=300_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ROOT / "docs" / "tune_page.png"))
            compare_screenshot(browser)
            browser.close()
    finally:
        view.terminate()
        tune.terminate()


if __name__ == "__main__":
    main()
