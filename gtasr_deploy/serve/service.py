"""``gtasr-serve http``: the x4 upscaler as an HTTP service on Ray Serve.

    POST /v1/upscale?name=photo.jpg&format=png&quality=95   body: the image file -> x4 image
    POST /v1/bicubic?...                                     same, plain bicubic (the page's "before")
    GET  /health                                             settings and batching counters (JSON)
    GET  /                                                   the web page (static/)

Every answer to a bad request is a 4xx with ``{"error": "<name>: <reason>"}`` on one line: 400
bad image or parameter, 413 upload over ``max_upload_bytes``. Anything else is a bug: logged with
its traceback on the server, answered 500 with one line and no traceback.
"""

# No `from __future__ import annotations`: FastAPI (through Serve's ingress) must see the real
# Request class in the route signatures.
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GtasrError
from ..weights_registry import REGISTRY, REPOSITORY
from .batching import BatchedEngine, TileCall, install
from .codec import (
    FORMATS,
    MEDIA_TYPES,
    ProcessingError,
    bicubic,
    process_upload,
    safe_name,
)
from .settings import UpscalerSettings

log = logging.getLogger("gtasr_deploy.serve")
OFFICIAL_WEIGHTS_PAGE = f"https://huggingface.co/{REPOSITORY}"
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}


@dataclass(frozen=True, kw_only=True)
class ServiceOptions:
    """Request handling of one replica (model settings are :class:`UpscalerSettings`)."""

    max_upload_bytes: int = 32 * 2**20
    max_pixels: int | None = 4_000_000  # x4 output of 4 MP is 64 MP: ~0.8 GB of float32 on the host
    max_batch_size: int = 8  # tiles per merged engine call
    batch_wait_s: float = 0.01  # how long the first tile waits for company
    max_ongoing_requests: int = 8  # each holds its image and x4 result in host memory


class RequestError(Exception):
    """A client mistake: answered with ``status`` and the one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


app = FastAPI(title="gtasr-serve", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown path (404), wrong method (405)...: the same one-line JSON shape as every other error."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(Exception)
async def _bug(_: Request, exc: Exception) -> JSONResponse:
    log.exception("gtasr-serve: unexpected error")  # the traceback stays in the server log
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


def _batch_tiles(calls: list[TileCall]) -> int:
    return sum(call.tiles for call in calls)


# Helpers sit above the class: Serve's ingress captures the module namespace as it is when
# the class is decorated.
def _parameters(request: Request) -> tuple[str, str, int]:
    query = request.query_params
    name = safe_name(query.get("name"))
    fmt = query.get("format", "png").lower()
    text = query.get("quality", "95")
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise RequestError(400, f"{name}: quality {text!r} is not an integer in 1..100")
    if fmt not in FORMATS:
        raise RequestError(400, f"{name}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    return name, fmt, int(text)


async def _read_body(request: Request, name: str, limit: int) -> bytes:
    """The upload, refused with 413 as soon as it passes ``limit`` bytes."""
    def too_large(size: int) -> RequestError:
        return RequestError(413, f"{name}: upload is {size:,} bytes, over the limit of {limit:,}")

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size)
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment
@serve.ingress(app)
class UpscaleService:
    """One replica: an Upscaler whose engine calls are merged across requests."""

    def __init__(self, settings: UpscalerSettings, options: ServiceOptions, threads: int | None = None) -> None:
        self.settings, self.options = settings, options
        self.upscaler = settings.build(default_threads=threads)
        self.engine = BatchedEngine(self.upscaler.engine, self._submit)
        install(self.upscaler, self.engine)
        self._tiles.set_max_batch_size(options.max_batch_size)
        self._tiles.set_batch_wait_timeout_s(options.batch_wait_s)
        # Requests block a thread while their tiles wait for a batch; the batch itself must never
        # wait for one of those threads, hence two pools.
        self._request_pool = ThreadPoolExecutor(options.max_ongoing_requests, thread_name_prefix="gtasr-req")
        self._engine_pool = ThreadPoolExecutor(1, thread_name_prefix="gtasr-engine")
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ routes

    @app.get("/health")
    async def health(self) -> dict:
        info, opts = self.engine.engine.info, self.upscaler.options
        return {"status": "ok", "weights": self.upscaler.weights_label, "model_card": self._model_card(),
                "backend": info.backend, "device": info.device, "precision": info.precision,
                "tiling": asdict(opts), "seed": self.upscaler.seed, **asdict(self.options),
                "batching": asdict(self.engine.stats)}

    @app.get("/")
    async def page(self) -> Response:
        return self._static("index.html")

    @app.get("/model-card")
    async def model_card(self) -> Response:
        """The embedded demo weights' model card (what they are, how they score)."""
        body = resources.files("gtasr_deploy.weights").joinpath("MODEL_CARD.md").read_bytes()
        return Response(body, media_type="text/plain; charset=utf-8")

    def _model_card(self) -> str | None:
        """Where the page links for the weights it runs: our model card for the embedded demo weights,
        the authors' repository for their checkpoints, nothing for other files."""
        weights = self.settings.upscaler_args.get("weights")
        if weights is None and self.upscaler.loaded is not None:
            return "/model-card"
        official = {entry.filename for entry in REGISTRY.values() if entry.filename}
        return OFFICIAL_WEIGHTS_PAGE if weights is not None and Path(weights).name in official else None

    @app.get("/static/{name}")
    async def static(self, name: str) -> Response:
        if name not in STATIC:
            raise RequestError(404, f"/static/{name}: no such file")
        return self._static(name)

    @app.post("/v1/upscale")
    async def upscale(self, request: Request) -> Response:
        return await self._answer(request, self._super_resolve, "x4")

    @app.post("/v1/bicubic")
    async def bicubic(self, request: Request) -> Response:
        return await self._answer(request, bicubic, "bicubic")

    # ------------------------------------------------------------------ work

    async def _answer(self, request: Request, sr_fn, label: str) -> Response:
        name, fmt, quality = _parameters(request)
        data = await _read_body(request, name, self.options.max_upload_bytes)
        self._loop = asyncio.get_running_loop()
        try:
            body, written, (width, height) = await self._in_pool(
                process_upload, data, sr_fn, name=name, fmt=fmt, quality=quality, max_pixels=self.options.max_pixels)
        except ProcessingError as exc:  # the image was fine; the server could not finish it
            log.error("gtasr-serve: %s", exc)
            raise RequestError(500, str(exc)) from None
        except GtasrError as exc:
            raise RequestError(400, str(exc)) from None
        filename = f"{Path(name).stem}_{label}.{written}"
        return Response(body, media_type=MEDIA_TYPES[written],
                        headers={"Content-Disposition": f'inline; filename="{filename}"',
                                 "X-Image-Size": f"{width}x{height}"})

    async def _in_pool(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._request_pool, lambda: fn(*args, **kwargs))

    def _super_resolve(self, rgb):
        """On a request thread: the Upscaler, whose engine calls wait in the batch queue."""
        return self.upscaler.upscale_float(rgb)

    def _submit(self, call: TileCall):
        """On a request thread: hand one engine call to the batch queue and wait for its result."""
        result = asyncio.run_coroutine_threadsafe(self._tiles(call), self._loop).result()
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, batch_size_fn=_batch_tiles)
    async def _tiles(self, calls: list[TileCall]) -> list:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._engine_pool, self.engine.run_calls, calls)

    @staticmethod
    def _static(name: str) -> Response:
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


def _drop_reattach_note(record: logging.LogRecord) -> bool:
    """serve.run attaches to the Serve instance serve.start has just started here, and Ray logs that
    "New http_options ... will not be applied", which reads as if --port were ignored. serve.start
    applied them; the note is dropped."""
    return "will not be applied" not in record.getMessage()


def deploy(settings: UpscalerSettings, options: ServiceOptions, *, host: str = "127.0.0.1", port: int = 8000,
           replicas: int = 1, cpus_per_replica: float = 1, gpus_per_replica: float = 0):
    """Start Serve's HTTP proxy on ``host:port`` and deploy the service (Ray must be initialised)."""
    serve.start(http_options={"host": host, "port": port})
    logging.getLogger("ray.serve").addFilter(_drop_reattach_note)
    threads = settings.threads or max(1, int(cpus_per_replica))
    deployment = UpscaleService.options(
        num_replicas=replicas, max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    return serve.run(deployment.bind(settings, options, threads), name="gtasr", route_prefix="/")
