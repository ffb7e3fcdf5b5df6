"""gtasr-serve http on a local Ray instance (2 CPUs, loopback only, embedded demo weights).

One Serve deployment for the whole file (starting Ray + Serve + a replica costs ~20 s here); the
reference outputs come from gtasr-upscale run in this process with the same --threads.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

# Ray Serve 2.x still uses pydantic-1 style Field() arguments: its warnings, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
THREADS = 2
MAX_UPLOAD = 300_000
MAX_PIXELS = 100_000


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth, photo-like uint8 RGB picture: gradients, a disc and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((y - height * 0.45) ** 2 + (x - width * 0.55) ** 2 < (min(height, width) * 0.3) ** 2)
    rgb = np.stack([x / width, y / height, 0.5 + 0.4 * disc], axis=-1) * 200 + 20
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _inputs(folder: Path) -> dict[str, Path]:
    """8-bit RGB, RGBA with alpha, 16-bit RGB, JPEG, a two-tile image: what the service must handle."""
    folder.mkdir()
    files = {"rgb.png": _photo(32, 32, 1), "alpha.png": _photo(40, 48, 2)}
    Image.fromarray(files["rgb.png"]).save(folder / "rgb.png")
    rgba = np.dstack([files["alpha.png"], np.linspace(0, 255, 48 * 40).reshape(40, 48).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    deep = (_photo(32, 32, 3).astype(np.uint16) * 257 + np.uint16(77))[..., ::-1]  # BGR for OpenCV
    cv2.imwrite(str(folder / "deep16.png"), deep)
    Image.fromarray(_photo(40, 48, 4)).save(folder / "photo.jpg", quality=90)
    Image.fromarray(_photo(32, 32, 5)).save(folder / "twin.png")  # same shape as rgb.png: merges with it
    Image.fromarray(_photo(48, 160, 6)).save(folder / "wide.png")  # two 128-px tiles: shared-norm passes
    return {p.name: p for p in sorted(folder.iterdir())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return _inputs(tmp_path_factory.mktemp("serve") / "in")


@pytest.fixture(scope="module")
def cli_outputs(files, tmp_path_factory) -> dict[str, bytes]:
    """gtasr-upscale's PNG for each input (same settings and threads as the service)."""
    from gtasr_deploy.batch.runner import collect_inputs, plan_outputs
    from gtasr_deploy.cli.upscale import main

    out = tmp_path_factory.mktemp("cli")
    previous = torch.get_num_threads()
    try:
        result = CliRunner().invoke(main, [str(next(iter(files.values())).parent), str(out), "--threads",
                                           str(THREADS), "-q"])
    finally:
        torch.set_num_threads(previous)
    assert result.exit_code == 0, result.output
    folder = next(iter(files.values())).parent
    jobs = plan_outputs(collect_inputs(folder), out)  # the CLI's own naming rule
    return {job.rel.name: job.dst.read_bytes() for job in jobs}


@pytest.fixture(scope="module")
def service():
    """Base URL of a running service; batch window 0.3 s so that concurrent requests do merge."""
    import ray
    from ray import serve

    from gtasr_deploy.serve.service import ServiceOptions, deploy
    from gtasr_deploy.serve.settings import serve_options

    ray.init(num_cpus=THREADS, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    port = _free_port()
    try:
        deploy(serve_options(threads=THREADS),
               ServiceOptions(max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, batch_wait_s=0.3),
               port=port, cpus_per_replica=THREADS)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(url: str, data: bytes, timeout: float = 120) -> tuple[int, object, bytes]:
    """(status, headers (case-insensitive), body)."""
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _pixels(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.int64)


def test_health_reports_the_cli_settings(service):
    status, body = _get(f"{service}/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok"
    from gtasr_deploy.serve.settings import open_upscaler, serve_options

    local = open_upscaler(serve_options(threads=THREADS))  # what gtasr-upscale picks here
    info = local.engine.info
    assert (health["backend"], health["device"], health["precision"]) == (info.backend, info.device, info.precision)
    assert health["tiling"]["tile"] == local.options.tile
    assert health["max_upload_bytes"] == MAX_UPLOAD and health["max_pixels"] == MAX_PIXELS


def test_lone_requests_return_the_cli_bytes(service, files, cli_outputs):
    """One request at a time: each tile runs alone, so the bytes are gtasr-upscale's exactly."""
    for name, path in files.items():
        status, headers, body = _post(f"{service}/v1/upscale?name={name}&format=png", path.read_bytes())
        assert status == 200, body
        assert headers["Content-Type"] == "image/png"
        assert body == cli_outputs[name], name


def test_concurrent_requests_are_batched_and_match_the_cli(service, files, cli_outputs):
    """Five requests at once: all answered, tiles of same-shaped images merged into one engine call.

    Batch composition moves CPU float results in the last bit (oneDNN picks kernels by batch size),
    so a merged image may differ from the CLI's by one code value in a few pixels, never more.
    """
    names = ["rgb.png", "twin.png", "alpha.png", "photo.jpg", "wide.png"]
    before = json.loads(_get(f"{service}/health")[1])["batching"]
    start = threading.Barrier(len(names))
    answers: dict[str, tuple] = {}

    def send(name):
        start.wait()
        answers[name] = _post(f"{service}/v1/upscale?name={name}", files[name].read_bytes())

    threads = [threading.Thread(target=send, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    after = json.loads(_get(f"{service}/health")[1])["batching"]
    for name in names:
        status, _, body = answers[name]
        assert status == 200, body
        got, want = _pixels(body), _pixels(cli_outputs[name])
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= 1, name
        assert np.mean(got != want) < 0.01, name
    assert after["requests_merged"] > before["requests_merged"], (before, after)


def test_16bit_and_alpha_are_kept(service, files):
    status, headers, body = _post(f"{service}/v1/upscale?name=deep16.png", files["deep16.png"].read_bytes())
    assert status == 200 and headers["X-Image-Size"] == "128x128"
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    status, _, body = _post(f"{service}/v1/upscale?name=alpha.png", files["alpha.png"].read_bytes())
    assert status == 200 and Image.open(io.BytesIO(body)).mode == "RGBA"


@pytest.mark.parametrize("query, data, code, words", [
    ("name=junk.png", b"this is not an image", 400, "junk.png: not an image file"),
    ("name=empty.png", b"", 400, "empty.png: empty upload"),
    ("name=cut.png", "TRUNCATED", 400, "cut.png: truncated or corrupt"),
    ("name=big.png", b"\0" * (MAX_UPLOAD + 1), 413, "over the limit of 300,000"),
    ("name=huge.png", "HUGE", 400, "over the limit of 100,000"),
    ("name=a.png&format=gif", "PNG", 400, "format 'gif' is not one of"),
    ("name=a.png&quality=0", "PNG", 400, "quality '0' is not an integer in 1..100"),
    ("name=a.png&quality=%C2%B2", "PNG", 400, "quality '²' is not an integer in 1..100"),
    ("name=%D1%84%D0%BE%D1%82%D0%BE.png&format=%E2%80%A8gif", "PNG", 400, "фото.png: format"),
])
def test_bad_uploads_get_a_one_line_4xx(service, files, query, data, code, words):
    if data == "TRUNCATED":
        data = files["rgb.png"].read_bytes()[:300]
    elif data == "HUGE":  # 400x300 = 120,000 px > MAX_PIXELS; flat, so the file is small
        buffer = io.BytesIO()
        Image.new("RGB", (400, 300), (90, 120, 150)).save(buffer, format="PNG")
        data = buffer.getvalue()
    elif data == "PNG":
        data = files["rgb.png"].read_bytes()
    status, headers, body = _post(f"{service}/v1/upscale?{query}", data)
    assert status == code, body
    assert headers["Content-Type"] == "application/json"
    message = json.loads(body)["error"]
    assert words in message and "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("name", ["фото.png", "照片.png", "📷.png"])
def test_names_in_any_script_come_back_rfc6266_encoded(service, files, name):
    """The live service (the request layer alone: tests/test_serve_requests.py, with Hypothesis)."""
    status, headers, body = _post(f"{service}/v1/upscale?name={urllib.parse.quote(name)}", files["rgb.png"].read_bytes())
    assert status == 200, body
    disposition = headers["Content-Disposition"]
    assert disposition.isascii()
    assert f"filename*=UTF-8''{urllib.parse.quote(name.removesuffix('.png') + '_x4.png')}" in disposition


def test_unknown_paths_and_methods_are_4xx(service):
    for path, code in (("/static/secret.py", 404), ("/v1/upscale", 405), ("/v2/nothing", 404)):
        status, body = _get(f"{service}{path}")
        assert status == code and "error" in json.loads(body), (path, body)
    status, page = _get(f"{service}/")
    assert status == 200 and b'id="file"' in page


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,1100", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


_DROP_A_DRAWN_PICTURE = """
const canvas = document.createElement("canvas");
canvas.width = 24; canvas.height = 20;
const ctx = canvas.getContext("2d");
const gradient = ctx.createLinearGradient(0, 0, 24, 20);
gradient.addColorStop(0, "#204080"); gradient.addColorStop(1, "#f0c030");
ctx.fillStyle = gradient; ctx.fillRect(0, 0, 24, 20);
canvas.toBlob((blob) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], arguments[0], {type: "image/png"}));
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}, "image/png");
"""


def test_web_page_upscales_a_photo_in_a_headless_browser(service, files, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        browser.get(f"{service}/")
        browser.find_element(By.ID, "file").send_keys(str(files["rgb.png"]))
        WebDriverWait(browser, 120).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
        state = browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")
        assert state == "done", browser.find_element(By.ID, "error").text
        result, before = browser.find_element(By.ID, "result"), browser.find_element(By.ID, "before")
        for image in (result, before):
            assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                          image) == [128, 128]
        link = browser.find_element(By.ID, "download")
        assert link.get_attribute("href").startswith("blob:") and link.get_attribute("download") == "rgb_x4.png"
        shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")).astype(int)
        box = result.rect
        x0, y0 = round(box["x"]), round(box["y"])
        region = shot[y0:y0 + round(box["height"]), x0:x0 + round(box["width"])]
        # the drop path: a 24x20 picture drawn on a canvas, dropped on the drop zone as a file
        browser.execute_script(_DROP_A_DRAWN_PICTURE, "drawn.png")
        WebDriverWait(browser, 120).until(
            lambda b: b.execute_script("return document.getElementById('result').naturalWidth") == 96)
        assert browser.find_element(By.ID, "download").get_attribute("download") == "drawn_x4.png"
        # a non-Latin file name: the upload, the answer and the download name all keep it
        browser.execute_script("document.getElementById('result').removeAttribute('src'); "
                               "document.body.dataset.state = '';")
        browser.execute_script(_DROP_A_DRAWN_PICTURE, "фото 照片 📷.png")
        WebDriverWait(browser, 120).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
            browser.find_element(By.ID, "error").text
        assert browser.find_element(By.ID, "download").get_attribute("download") == "фото 照片 📷_x4.png"
    finally:
        browser.quit()
    assert region.shape[:2] == (128, 128)
    background = np.array([0xF4, 0xF4, 0xF1])
    assert np.mean(np.abs(region - background).sum(-1) > 30) > 0.5  # the picture is shown there
    assert region.std() > 10  # and it is a picture, not a flat box


@pytest.mark.parametrize("args, words", [
    (["--weights", "no/such/weights.safetensors"], "no/such/weights.safetensors"),
    (["--batch", "16", "--max-batch-size", "8"], "--batch 16 is larger than --max-batch-size 8"),
    (["--tile", "big"], "--tile 'big'"),
])
def test_http_usage_errors_are_one_line_before_anything_starts(args, words):
    from gtasr_deploy.cli.serve import main

    result = CliRunner().invoke(main, ["http", *args])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_page_names_the_weights_and_links_the_model_card(service):
    health = json.loads(_get(f"{service}/health")[1])
    assert health["weights"].startswith("embedded demo weights") and health["model_card"] == "/model-card"
    status, card = _get(f"{service}/model-card")
    assert status == 200 and b"demonstration weights" in card
    page = _get(f"{service}/")[1].decode()
    assert 'id="weights-name"' in page and 'id="model-card"' in page
