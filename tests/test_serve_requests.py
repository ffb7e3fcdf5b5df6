"""The HTTP request layer of gtasr-serve (serve/http_api.py) in-process, without Ray: property-based.

The properties: whatever a client sends (parameters, names and headers in any script, any bytes
in the query, any Content-Length, any body), the answer is 200 or a 4xx whose body is one line of
JSON with an "error"; a 200 carries the download name in RFC 6266 / RFC 5987 form, ASCII only,
which a standard parser (email's RFC 2231 reader) decodes back to the name the client sent.
The app here is the service's own request code (answer_upload + install_error_handlers) around a
nearest-neighbour x4 instead of the model; tests/test_serve.py checks the live Ray service.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import urllib.parse

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the test extra)")
from fastapi import FastAPI, Request  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gtasr_deploy.serve.codec import FORMATS  # noqa: E402
from gtasr_deploy.serve.http_api import (  # noqa: E402
    RequestError,
    answer_upload,
    content_disposition,
    display_name,
    download_name,
    install_error_handlers,
    parse_upload,
)

MAX_UPLOAD = 4096
MAX_PIXELS = 10_000
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nearest4(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)


async def _direct(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/upscale")
    async def upscale(request: Request):
        return await answer_upload(request, nearest4, "x4", max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS,
                                   in_pool=_direct)

    @app.get("/static/{name}")
    async def static(name: str):
        raise RequestError(404, f"/static/{name}: no such file")

    return app


APP = _app()


def call(query: bytes, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
         method: str = "POST", path: str = "/v1/upscale") -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app, as an HTTP server hands it over (raw query and headers)."""
    headers = list(headers or [])
    if not any(k.lower() == b"content-length" for k, _ in headers):
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)] or [b""]
    sent: list[dict] = []

    async def receive():
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(APP(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    out_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], out_headers, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def png(width: int = 4, height: int = 3) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png()


def filename_of(header: str) -> str:
    """The file name a recipient takes from a Content-Disposition value, as RFC 6266 section 4.3
    says: ``filename*`` (RFC 5987: UTF-8, only attr-chars and %XX) when present, else ``filename``."""
    extended = re.search(r"; filename\*=UTF-8''([^;\s]*)", header)
    if extended:
        value = extended.group(1)
        assert re.fullmatch(r"[A-Za-z0-9!#$&+\-.^_`|~%]*", value), value
        return urllib.parse.unquote(value, encoding="utf-8", errors="strict")
    plain = re.search(r'; filename="([^"\\]*)"', header)
    assert plain, header
    return plain.group(1)


def assert_error_shape(status: int, headers: dict[str, str], body: bytes) -> str:
    assert 400 <= status < 500, (status, body)
    assert headers["content-type"] == "application/json"
    text = body.decode("ascii")
    assert text.count("\n") == 1 and text.endswith("\n"), text
    message = json.loads(text)["error"]
    assert isinstance(message, str) and message and "Traceback" not in message
    return message


names = st.text(max_size=300)  # every script, emoji, control characters, quotes, slashes, %, ;
params = st.one_of(st.text(max_size=30), st.integers(-10**6, 10**6).map(str), st.sampled_from(FORMATS))


@SETTINGS
@given(name=names, fmt=params, quality=params, body=st.sampled_from([PNG, b"", b"\x89PNG\r\n", PNG[:40]]))
def test_any_parameters_get_200_or_a_one_line_4xx(name, fmt, quality, body):
    query = urllib.parse.urlencode({"name": name, "format": fmt, "quality": quality}).encode()
    status, headers, answer = call(query, body)
    if status != 200:
        message = assert_error_shape(status, headers, answer)
        assert message.startswith(display_name(name))
        return
    upload = parse_upload({"name": name, "format": fmt, "quality": quality})
    written = "png" if upload.fmt == "same" else upload.fmt
    disposition = headers["content-disposition"]
    assert disposition.isascii() and "\n" not in disposition
    assert filename_of(disposition) == download_name(display_name(name), "x4", written)
    assert headers["x-image-size"] == "16x12"




@SETTINGS
@given(query=st.binary(max_size=200))
def test_any_query_bytes_get_200_or_a_one_line_4xx(query):
    """Raw query strings as a client may send them: invalid UTF-8, stray %, repeated keys."""
    status, headers, answer = call(query, PNG)
    assert status == 200 or assert_error_shape(status, headers, answer)


header_bytes = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in b"\r\n"))


@SETTINGS
@given(length=st.one_of(st.text(max_size=30).map(lambda t: t.encode("utf-8")), header_bytes,
                        st.integers(0, 10**30).map(lambda n: str(n).encode())),
       extra=st.lists(st.tuples(st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).map(str.encode),
                                header_bytes), max_size=4),
       size=st.sampled_from([0, 1, MAX_UPLOAD, MAX_UPLOAD + 1]))
def test_any_headers_and_sizes_get_200_or_a_one_line_4xx(length, extra, size):
    body = (PNG + b"\0" * MAX_UPLOAD)[:size] if size else b""
    status, headers, answer = call(b"name=a.png", body, headers=[(b"content-length", length), *extra])
    if size > MAX_UPLOAD:
        assert status == 413
    assert status == 200 or assert_error_shape(status, headers, answer)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 5000), height=st.integers(1, 3), fmt=st.sampled_from(FORMATS), alpha=st.booleans())
@example(width=4200, height=2, fmt="webp", alpha=False)
def test_any_image_size_and_format_get_200_or_a_one_line_4xx(width, height, fmt, alpha):
    """Sizes a client chooses: a 4,200 px wide strip is fine as PNG, but its x4 is over what WebP
    holds (16,383 px per side): a 400 before any work, not a 500 from the encoder after it."""
    buffer = io.BytesIO()
    Image.new("RGBA" if alpha else "RGB", (width, height), (10, 200, 30, 128)[:4 if alpha else 3]).save(buffer, "PNG")
    status, headers, answer = call(urllib.parse.urlencode({"name": "strip.png", "format": fmt}).encode(),
                                   buffer.getvalue())
    if status == 200:
        assert headers["x-image-size"] == f"{4 * width}x{4 * height}"
    else:
        message = assert_error_shape(status, headers, answer)
        assert width * height > MAX_PIXELS or (fmt == "webp" and 4 * width > 16_383), message


@pytest.mark.parametrize("name", ["фото.png", "照片.jpg", "📷 holiday.webp", "naïve café.png", 'a"b;c%20.png',
                                  "back\\slash.png", "tab\there.png", "ﬁle.png", "", ".", "..", "/"])
def test_names_in_any_script_come_back_rfc6266_encoded(name):
    query = urllib.parse.urlencode({"name": name}).encode()
    status, headers, _ = call(query, PNG)
    assert status == 200
    disposition = headers["content-disposition"]
    assert disposition.isascii() and disposition.startswith('inline; filename="')
    expected = download_name(display_name(name), "x4", "png")
    assert filename_of(disposition) == expected
    fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback.endswith(".png") and fallback.isprintable()


@pytest.mark.parametrize("quality", ["²", "٣", "1e2", "0x10", " ", "", "+5", "9" * 5000, "101", "0", "-1"])
def test_quality_is_ascii_digits_in_range(quality):
    status, headers, answer = call(urllib.parse.urlencode({"name": "a.png", "quality": quality}).encode(), PNG)
    assert "quality" in assert_error_shape(status, headers, answer)


def test_content_disposition_keeps_plain_names_plain():
    assert content_disposition("photo_x4.png") == 'inline; filename="photo_x4.png"'
    header = content_disposition("фото_x4.png")
    assert header.startswith('inline; filename="') and "filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE_x4.png" in header


def test_unknown_static_names_in_any_script_are_404_json():
    for name in ("secret.py", "%D1%84%D0%BE%D1%82%D0%BE", "%E2%80%A8x"):
        status, headers, answer = call(b"", method="GET", path=urllib.parse.unquote(f"/static/{name}"))
        assert status == 404 and "no such file" in assert_error_shape(status, headers, answer)


def _samples() -> list[bytes]:
    """One small file per format and kind the service reads: the seeds of the mutations below."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    files = []
    for mode, fmt, extra in (("RGB", "PNG", {}), ("RGBA", "PNG", {}), ("L", "PNG", {}), ("P", "PNG", {}),
                             ("RGB", "JPEG", {}), ("CMYK", "JPEG", {}), ("RGB", "WEBP", {}), ("RGB", "BMP", {}),
                             ("RGB", "TIFF", {}), ("I;16", "PNG", {}), ("RGB", "GIF", {}),
                             ("RGB", "TIFF", {"compression": "tiff_lzw"})):
        image = Image.fromarray(rgb).convert(mode) if mode != "I;16" else Image.fromarray(
            rgb[..., 0].astype(np.uint16) * 257)
        buffer = io.BytesIO()
        image.save(buffer, fmt, **extra)
        files.append(buffer.getvalue())
    return files


SAMPLES = _samples()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(range(len(SAMPLES))), cut=st.integers(0, 400),
       flips=st.lists(st.tuples(st.integers(0, 399), st.integers(0, 255)), max_size=6),
       fmt=st.sampled_from(FORMATS))
def test_any_bytes_of_any_image_format_get_200_or_a_one_line_4xx(seed, cut, flips, fmt):
    """Uploads as a client may send them: valid files of every format, cut short and with bytes changed."""
    data = bytearray(SAMPLES[seed])
    for where, value in flips:
        if where < len(data):
            data[where] = value
    data = bytes(data[:cut or len(data)])
    status, headers, answer = call(urllib.parse.urlencode({"name": "x.img", "format": fmt}).encode(), data)
    assert status == 200 or assert_error_shape(status, headers, answer)
