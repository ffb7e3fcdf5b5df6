"""PyTorch engine: D in eager mode on CPU or CUDA (see :mod:`gtasr_deploy.engines.base`).

fp32 runs the model as it is; bf16 and fp16 run a reduced-precision copy with the fp32 islands of
the fp16 ONNX graph (:func:`gtasr_deploy.model.precond.reduced_precision`). bf16 is the CPU fast
path on processors that compute it natively (AMX, AVX512-BF16; see :mod:`gtasr_deploy.cpu`);
fp16 is meant for CUDA (on a CPU it runs, slowly, to check numerics). Inputs and outputs stay
fp32. GroupNorm statistics are read and shared through :class:`~gtasr_deploy.model.shared_norm.NormIO`,
the same code the exported graph is traced from. On CUDA, ``cuda_graph=True`` captures one CUDA
graph per batch size for the per-tile mode and replays it.

``channels_last=True`` stores weights and activations NHWC (what cuDNN's and oneDNN's fastest
convolution kernels want). ``compile=True`` runs the model through ``torch.compile`` for the static
tile shape ("reduce-overhead", i.e. CUDA graphs, on CUDA; inductor's default on CPU); the compiled
code is cached on disk by inductor (``TORCHINDUCTOR_CACHE_DIR``), so a second run does not compile
again. Compilation covers both normalisation modes: the statistics pass and the shared pass are
the same traced function with different inputs (:class:`_NormGraph`).
"""

from __future__ import annotations

import torch

from ..errors import BackendUnavailableError, ConfigError
from ..model.precond import Denoiser, reduced_precision
from ..model.shared_norm import NormIO
from .base import BackendFacts, Engine, EngineInfo

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(DTYPES)
MAX_BATCH = 1 << 16  # eager mode takes any batch; this only bounds the tiler's batching


class _NormGraph(torch.nn.Module):
    """D with GroupNorm statistics as explicit inputs and outputs (the exported graph's signature),
    so one compiled function serves per-tile, statistics and shared passes."""

    def __init__(self, model: Denoiser, norm_io: NormIO) -> None:
        super().__init__()
        self.model, self.norm_io = model, norm_io

    def forward(self, x_t, lq, sigma, norm_stats, norm_mix):
        with self.norm_io.call(norm_stats, norm_mix):
            return self.model(x_t, sigma, lq), self.norm_io.tile_statistics()


class TorchEngine(Engine):
    """Evaluate D with PyTorch. ``tile_lr`` None: any shape that meets the size rule."""

    facts = BackendFacts(name="torch", precisions=PRECISIONS, devices=("cpu", "cuda"), native_bf16=True)

    def __init__(self, model: Denoiser, *, device: str = "cpu", precision: str = "fp32",
                 tile_lr: tuple[int, int] | None = None, cuda_graph: bool = False, channels_last: bool = False,
                 compile: bool = False) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"torch engine: precision {precision!r}, expected one of {list(PRECISIONS)}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"torch engine: device {device!r} requested but CUDA is not available "
                                          "(torch.cuda.is_available() is False); use device='cpu'")
        if cuda_graph and self.device.type != "cuda":
            raise ConfigError(f"torch engine: cuda_graph=True needs a CUDA device, got {device!r}")
        if cuda_graph and compile:
            raise ConfigError("torch engine: compile=True already uses CUDA graphs on CUDA; drop cuda_graph")
        self.model = reduced_precision(model.eval(), DTYPES[precision]).to(self.device).eval()
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._norm_io = NormIO(self.model)
        self._compiled = None
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._compiled = torch.compile(_NormGraph(self.model, self._norm_io), mode=mode, dynamic=False)
        self.info = EngineInfo(backend=self.facts.name, facts=self.facts, device=str(self.device),
                               precision=precision,
                               size_multiple=model.config.size_multiple,
                               tile_lr=None if tile_lr is None else (int(tile_lr[0]), int(tile_lr[1])),
                               batch_range=(1, 1, MAX_BATCH), norm_groups=self._norm_io.size,
                               scale=model.config.scale)
        self._cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple] = {}  # input shapes → (graph, static inputs, static output)

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        with torch.inference_mode():
            x_t, lq, sigma = (torch.from_numpy(a).to(self.device, non_blocking=True) for a in (x_t, lq, sigma))
            if self._memory_format is torch.channels_last:
                x_t, lq = (t.contiguous(memory_format=torch.channels_last) for t in (x_t, lq))
            if self._compiled is not None:
                return self._run_compiled(x_t, lq, sigma, norm_stats, want_stats)
            if norm_stats is None and not want_stats:
                out = self._replay(x_t, lq, sigma) if self._cuda_graph else self.model(x_t, sigma, lq)
                return out.float().cpu().numpy(), None
            shared = None if norm_stats is None else torch.from_numpy(norm_stats).to(self.device)
            with self._norm_io.installed(), self._norm_io.call(shared):
                out = self.model(x_t, sigma, lq)
                stats = self._norm_io.tile_statistics() if want_stats else None
            return out.float().cpu().numpy(), None if stats is None else stats.cpu().numpy()

    def _run_compiled(self, x_t, lq, sigma, norm_stats, want_stats):
        shared = norm_stats is not None
        stats_in = (torch.from_numpy(norm_stats) if shared else torch.zeros(2, self.info.norm_groups)).to(self.device)
        mix = torch.full((1,), 1.0 if shared else 0.0, device=self.device)
        with self._norm_io.installed():
            out, stats = self._compiled(x_t, lq, sigma, stats_in, mix)
        if want_stats:
            return None, stats.float().cpu().numpy()
        return out.float().cpu().numpy(), None

    def _replay(self, x_t: torch.Tensor, lq: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Run through a CUDA graph captured once per input shape (static buffers, copied in)."""
        key = (tuple(x_t.shape), tuple(lq.shape))
        if key not in self._graphs:
            static = [t.clone() for t in (x_t, lq, sigma)]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside capture: lazy init, cuDNN autotuning
                for _ in range(2):
                    self.model(static[0], static[2], static[1])
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.model(static[0], static[2], static[1])
            self._graphs[key] = (graph, static, out)
        graph, static, out = self._graphs[key]
        for buffer, value in zip(static, (x_t, lq, sigma)):
            buffer.copy_(value)
        graph.replay()
        return out.clone()

    def close(self) -> None:
        self._graphs.clear()
