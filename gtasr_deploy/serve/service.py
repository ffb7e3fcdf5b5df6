"""``gtasr-serve http``: the x4 upscaler as an HTTP service on Ray Serve.

    POST /v1/upscale?name=photo.jpg&format=png&quality=95   body: the image file -> x4 image
    POST /v1/bicubic?...                                     same, plain bicubic (the page's "before")
    GET  /health                                             settings and batching counters (JSON)
    GET  /                                                   the web page (static/)

Every answer to a bad request is a 4xx with ``{"error": "<name>: <reason>"}`` on one line: 400
bad image or parameter, 413 upload over ``max_upload_bytes``; nothing a client sends gives a 500
(the request layer, :mod:`gtasr_deploy.serve.http_api`, states the rules). A 500 is a fault of
the server: logged with its traceback, answered with one line and no traceback.
"""

# No `from __future__ import annotations`: FastAPI (through Serve's ingress) must see the real
# Request class in the route signatures.
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve

from ..inference.options import UpscaleOptions
from ..weights.registry import REGISTRY, REPOSITORY
from .batching import BatchedEngine, TileCall
from .codec import bicubic
from .http_api import RequestError, answer_upload, install_error_handlers
from .settings import ServiceOptions, open_upscaler

log = logging.getLogger("gtasr_deploy.serve")
OFFICIAL_WEIGHTS_PAGE = f"https://huggingface.co/{REPOSITORY}"
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}


app = FastAPI(title="gtasr-serve", docs_url=None, redoc_url=None, openapi_url=None)
install_error_handlers(app)


def _batch_tiles(calls: list[TileCall]) -> int:
    return sum(call.tiles for call in calls)


@serve.deployment
@serve.ingress(app)
class UpscaleService:
    """One replica: an Upscaler whose engine calls are merged across requests."""

    def __init__(self, upscale: UpscaleOptions, options: ServiceOptions, threads: int | None = None) -> None:
        self.upscale, self.options = upscale, options
        # the model's Upscaler, then one like it whose engine calls wait in the batch queue
        model = open_upscaler(upscale, default_threads=threads)
        self.engine = BatchedEngine(model.engine, self._submit)
        self.upscaler = model.with_engine(self.engine)
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
        weights = self.upscale.weights
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
        self._loop = asyncio.get_running_loop()
        return await answer_upload(request, sr_fn, label, max_upload_bytes=self.options.max_upload_bytes,
                                   max_pixels=self.options.max_pixels, in_pool=self._in_pool)

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


def deploy(upscale: UpscaleOptions, options: ServiceOptions, *, host: str = "127.0.0.1", port: int = 8000,
           replicas: int = 1, cpus_per_replica: float = 1, gpus_per_replica: float = 0):
    """Start Serve's HTTP proxy on ``host:port`` and deploy the service (Ray must be initialised)."""
    serve.start(http_options={"host": host, "port": port})
    logging.getLogger("ray.serve").addFilter(_drop_reattach_note)
    threads = upscale.threads or max(1, int(cpus_per_replica))
    deployment = UpscaleService.options(
        num_replicas=replicas, max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    return serve.run(deployment.bind(upscale, options, threads), name="gtasr", route_prefix="/")
