"""The head explorer (logic and, in headless Chromium, the web app) and results that draw themselves."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from localize.heads.explore import Explorer, heads_file_of
from localize.heads.explore_app import example_images
from PIL import Image

import localize

EXAMPLE = Path(localize.__file__).parent / "assets" / "examples" / "red-circle-blue-square.png"


@pytest.fixture(scope="module")
def shapes_localizer():
    return localize.load("shapes-tiny")


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_examples_are_shipped():
    assert {Path(p).name for p in example_images()} >= {EXAMPLE.name}


def test_toggling_a_head_regrounds_from_the_cached_maps_without_a_forward(shapes_localizer):
    explorer = Explorer(shapes_localizer, heads_file_of(shapes_localizer.heads_source))
    image = shapes_localizer.load_image(EXAMPLE)
    grids = explorer.analyse(image, ["the red circle", "the blue square"])
    calls = shapes_localizer.vlm.capturer.forward_calls
    assert grids[0].maps.shape == (4, 4, 16, 16) and np.isfinite(grids[0].entropy).all()
    before = explorer.ground(image, grids)
    direct = shapes_localizer.ground_many(image, ["the red circle", "the blue square"])
    np.testing.assert_allclose(before[0].box, direct[0].box)  # the same heads give the same box as ground()
    calls = shapes_localizer.vlm.capturer.forward_calls
    explorer.toggle((3, 0))
    after = explorer.ground(image, explorer.analyse(image, ["the red circle", "the blue square"]))
    assert shapes_localizer.vlm.capturer.forward_calls == calls  # no new forward pass
    assert after[0].heads == (*shapes_localizer.heads, (3, 0))
    assert not np.allclose(before[0].heatmap, after[0].heatmap)
    explorer.toggle((3, 0))
    again = explorer.ground(image, grids)
    np.testing.assert_allclose(again[0].box, before[0].box)


def test_the_grid_figure_maps_clicks_to_heads(shapes_localizer):
    explorer = Explorer(shapes_localizer)
    image = shapes_localizer.load_image(EXAMPLE)
    figure = explorer.render(explorer.analyse(image, ["the red circle"])[0])
    layers, heads = explorer.shape
    assert figure.width > heads * explorer.cell and figure.height > layers * explorer.cell
    from localize.viz import head_grid_layout

    layout = head_grid_layout(layers, heads, cell=explorer.cell)
    step_x, step_y = explorer.cell + layout["pad"], explorer.cell + layout["label_h"] + layout["pad"]
    x, y = layout["gutter"] + 2 * step_x + 10, layout["gutter"] + 3 * step_y + 10
    assert explorer.head_at(x, y) == (3, 2)
    assert explorer.head_at(3, 3) is None  # the gutter
    assert explorer.tau(explorer.analyse(image, ["the red circle"])[0])[1] == "this phrase's S_img curve"


def test_a_grounding_shows_itself_as_a_png_of_the_image_size(shapes_localizer, tmp_path):
    grounding = shapes_localizer.ground(str(EXAMPLE), "the red circle")
    picture = _png(grounding._repr_png_())
    assert picture.size == Image.open(EXAMPLE).size
    assert np.asarray(picture).std() > 0
    groundings = shapes_localizer.ground_many(str(EXAMPLE), ["the red circle", "the blue square"])
    assert isinstance(groundings, localize.Groundings) and _png(groundings._repr_png_()).width > picture.width
    grounding.save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").size == picture.size


def test_attention_maps_and_a_discovery_result_show_themselves(shapes_localizer):
    from localize.heads import discover

    from localize.data.registry import open_dataset

    maps = shapes_localizer.vlm.capture(str(EXAMPLE), ["the red circle"], heads=[(3, 1), (2, 1)])[0]
    assert _png(maps._repr_png_()).width > 2 * 72
    assert maps.subset([(2, 1)]).heads == ((2, 1),)
    source = open_dataset("shapes", split="train", size=4)
    samples = [source[i] for i in range(4)]
    result = discover.discover(shapes_localizer.vlm, samples, skip_layers=2, per_sample=2, progress=False)
    assert _png(result._repr_png_()).width > 1000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _browser():
    """A headless Chromium driven by selenium, or a skip saying why there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        pytest.skip(f"selenium is not installed: {err}")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no Chromium and chromedriver on PATH (.ci/run installs Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(flag)
    options.binary_location = binary
    return webdriver.Chrome(service=Service(driver), options=options)


def _serve(port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "localize", "explore", "--port", str(port)]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"localize explore exited: {server.stdout.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise AssertionError("localize explore did not answer within 180 s")


@pytest.mark.slow
def test_the_explorer_in_a_real_browser(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    port = _free_port()
    server = _serve(port)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 90)
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#image input[type=file]"))
        upload.send_keys(str(EXAMPLE))
        browser.find_element(By.CSS_SELECTOR, "#phrases textarea").send_keys("the red circle")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image img"))
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: "box (" in b.find_element(By.ID, "results").text)
        grid = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#head-grid img"))
        assert browser.find_elements(By.CSS_SELECTOR, "#overlays img")
        heads_before = browser.find_element(By.ID, "heads").text
        browser.save_screenshot(str(tmp_path / "explorer.png"))
        # click the tile of L3 H0 (not in shapes-tiny's set): the heads in use change, with no new capture
        natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", grid)
        scale = grid.size["width"] / natural[0]
        from localize.viz import head_grid_layout

        layout = head_grid_layout(4, 4)
        x = layout["gutter"] + layout["cell"] // 2
        y = layout["gutter"] + 3 * (layout["cell"] + layout["label_h"] + layout["pad"]) + layout["cell"] // 2
        offset = (x * scale - grid.size["width"] / 2, y * scale - grid.size["height"] / 2)
        ActionChains(browser).move_to_element_with_offset(grid, *map(round, offset)).click().perform()
        wait.until(lambda b: "L3 H0" in b.find_element(By.ID, "heads").text)
        assert "no forward pass" in browser.find_element(By.ID, "results").text
        assert "L3 H0" not in heads_before
        browser.save_screenshot(str(tmp_path / "explorer-toggled.png"))
        assert Image.open(tmp_path / "explorer.png").size[0] >= 1000
    finally:
        browser.quit()
        server.kill()
        server.wait()
