"""The HTTP request layer of ``gtasr-serve http``, without Ray: parse, check, answer.

The rule, stated once: every request gets 200 or a 4xx whose body is one line of JSON,
``{"error": "<name>: <reason>"}``, whatever a client puts in it (parameters, file names and
headers in any script, any size, any encoding). A 500 means a fault of the server itself (a
backend that failed on a decoded image, a bug); it is logged with its traceback and answered
with one line.

* Parameters: ``name`` (any text; shown back as its last path part, printable, at most
  :data:`NAME_CHARS` characters), ``format`` (:data:`~gtasr_deploy.serve.codec.FORMATS`),
  ``quality`` (ASCII digits, 1..100). Nothing else is read from the query.
* ``Content-Length``: only ASCII digits count; a larger declared size is refused (413) before
  the body is read, and the body is counted as it arrives whatever the header said.
* The download name goes back in ``Content-Disposition`` as RFC 6266 asks: an ASCII
  ``filename="..."`` fallback and the exact UTF-8 name in ``filename*=UTF-8''...`` (RFC 5987),
  so a header never carries a character HTTP cannot (a non-Latin-1 name gave a 500 before).

:mod:`gtasr_deploy.serve.service` puts this on Ray Serve; tests drive it in-process.
"""

# No `from __future__ import annotations`: FastAPI must see the real Request class.
import json
import logging
import re
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GtasrError
from .codec import FORMATS, MEDIA_TYPES, ProcessingError, process_upload

log = logging.getLogger("gtasr_deploy.serve")
NAME_CHARS = 120  # a display name longer than this is cut (messages and downloads stay readable)
_DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII only: str.isdigit() also takes '²' and '٣', int() not all
_TOKEN_SAFE = "!#$&+-.^_`|~"  # RFC 5987 attr-char punctuation: left as it is in filename*


class RequestError(Exception):
    """A client mistake: answered with ``status`` and the one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, kw_only=True)
class Upload:
    """What a client asked for: display name, output format, JPEG/WebP quality."""

    name: str
    fmt: str
    quality: int


def one_line(text: str) -> str:
    """``text`` on one line: control characters and line breaks become spaces, runs collapse."""
    return " ".join("".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text).split())


def error_response(status: int, message: str) -> Response:
    """The one shape of every error: one line of JSON (non-ASCII escaped, so any text encodes)."""
    body = json.dumps({"error": one_line(message)}, ensure_ascii=True) + "\n"
    return Response(body, status_code=status, media_type="application/json")


def display_name(name: str | None) -> str:
    """A display name for messages and the download: the last path part, printable, short."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '"')
    base = base.strip()[:NAME_CHARS]
    return "upload" if base in ("", ".", "..") else base


def parse_upload(query: Mapping[str, str]) -> Upload:
    """The parameters of an upload; RequestError(400) names the bad one."""
    name = display_name(query.get("name"))
    fmt = query.get("format", "png").strip().lower()
    text = query.get("quality", "95").strip()
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 100:
        raise RequestError(400, f"{name}: quality {text[:40]!r} is not an integer in 1..100")
    if fmt not in FORMATS:
        raise RequestError(400, f"{name}: format {fmt[:40]!r} is not one of {', '.join(FORMATS)}")
    return Upload(name=name, fmt=fmt, quality=int(text))


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The Content-Length a client declared, when it is a plain ASCII number; else None (the body
    is counted as it arrives anyway)."""
    text = headers.get("content-length", "").strip()
    return int(text) if _DIGITS.fullmatch(text) else None


def content_disposition(filename: str, disposition: str = "inline") -> str:
    """RFC 6266 header value: ASCII ``filename=`` fallback plus ``filename*=UTF-8''`` (RFC 5987)."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = "".join(ch if ch.isprintable() and ch not in '"\\%;' else "_" for ch in ascii_name).strip()
    stem, dot, suffix = filename.rpartition(".")
    if not ascii_name.strip("._ ") or ascii_name.rpartition(".")[2] != suffix:
        ascii_name = f"download.{suffix}" if dot and suffix.isascii() else "download"
    value = f'{disposition}; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{urllib.parse.quote(filename, safe=_TOKEN_SAFE)}"
    return value


def download_name(name: str, label: str, written: str) -> str:
    """``photo.jpg`` -> ``photo_x4.png``: the upload's stem, the label and the written format."""
    stem = Path(name).stem if "." in name.lstrip(".") else name
    return f"{stem}_{label}.{written}"


async def read_body(request: Request, name: str, limit: int) -> bytes:
    """The upload, refused with 413 as soon as it passes ``limit`` bytes."""
    def too_large(size: int) -> RequestError:
        return RequestError(413, f"{name}: upload is {size:,} bytes, over the limit of {limit:,}")

    declared = declared_length(request.headers)
    if declared is not None and declared > limit:
        raise too_large(declared)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size)
        chunks.append(chunk)
    return b"".join(chunks)


InPool = Callable[..., Awaitable]  # (fn, *args, **kwargs) -> awaitable result, off the event loop


async def answer_upload(request: Request, sr_fn, label: str, *, max_upload_bytes: int, max_pixels: int | None,
                        in_pool: InPool) -> Response:
    """Parse, read, upscale (``sr_fn`` through the CLI's own per-file path) and answer one upload."""
    upload = parse_upload(request.query_params)
    data = await read_body(request, upload.name, max_upload_bytes)
    try:
        body, written, (width, height) = await in_pool(
            process_upload, data, sr_fn, name=upload.name, fmt=upload.fmt, quality=upload.quality,
            max_pixels=max_pixels)
    except ProcessingError as exc:  # the image was fine; the server could not finish it
        log.error("gtasr-serve: %s", exc)
        raise RequestError(500, str(exc)) from None
    except GtasrError as exc:
        raise RequestError(400, str(exc)) from None
    return Response(body, media_type=MEDIA_TYPES[written],
                    headers={"Content-Disposition": content_disposition(download_name(upload.name, label, written)),
                             "X-Image-Size": f"{width}x{height}"})


def install_error_handlers(app: FastAPI) -> None:
    """Every error of ``app`` as one line of JSON: client mistakes 4xx, unknown paths 404/405,
    anything else 500 with the traceback in the server log only."""

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> Response:
        return error_response(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        return error_response(400, f"bad request: {errors[0].get('msg', 'invalid') if errors else 'invalid'}")

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> Response:
        log.exception("gtasr-serve: unexpected error")  # the traceback stays in the server log
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")
