"""PyTorch engine: D in eager mode on CPU or CUDA (see :mod:`gtasr_deploy.engines.base`).

fp32 runs the model as it is. fp16 (meant for CUDA; on CPU it runs, slowly, to check numerics)
runs a half-precision copy with the same fp32 islands as the fp16 ONNX graph (SPEC §4,
:mod:`gtasr_deploy.export.fp16`): c_skip/c_out/c_noise, the positional embedding, the embedding
MLP and every block's embedding projection, every GroupNorm with its affine, the attention
bias + softmax (``WindowAttention`` already casts the logits to fp32) and the final D
combination; inputs and outputs stay fp32. On CUDA, ``cuda_graph=True`` captures one CUDA graph
per batch size on static device buffers and replays it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BackendUnavailableError, ConfigError
from ..model.network import GroupNorm, SongUNetSwin, WindowAttention
from ..model.precond import Denoiser, preconditioning
from .base import Engine, EngineInfo

PRECISIONS = ("fp32", "fp16")
MAX_BATCH = 1 << 16  # eager mode takes any batch; this only bounds the tiler's batching


class Fp32GroupNorm(GroupNorm):
    """GroupNorm computed in fp32 on fp32 parameters, returned in the input dtype (an fp32 island)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class Fp16Denoiser(nn.Module):
    """D with an fp16 backbone and fp32 islands; same call and fp32 I/O as :class:`Denoiser`."""

    def __init__(self, denoiser: Denoiser) -> None:
        super().__init__()
        self.config = denoiser.config
        self.sigma_data = denoiser.sigma_data
        self.model = _half_with_islands(copy.deepcopy(denoiser.model))

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor | float, lq: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x_t.device).reshape(-1).expand(n)
        c_skip, c_out, c_noise = preconditioning(sigma, self.sigma_data)
        f = self.model(x_t.half(), c_noise, lq.half()).float()
        return c_skip[:, None, None, None] * x_t.float() + c_out[:, None, None, None] * f


def _half_with_islands(backbone: SongUNetSwin) -> SongUNetSwin:
    """Cast the backbone to fp16, then restore fp32 for the island parameters."""
    backbone.half()
    backbone.map_layer0.float()  # embedding MLP (fed by the fp32 positional embedding)
    backbone.map_layer1.float()
    for name, module in backbone.named_modules():
        if isinstance(module, GroupNorm):
            module.float()
            module.__class__ = Fp32GroupNorm  # same parameters and state-dict keys, fp32 lowering
        elif name.endswith(".affine"):  # per-block embedding projection: depends on sigma only
            module.float()
        elif isinstance(module, WindowAttention):
            module.relative_position_bias_table.data = module.relative_position_bias_table.data.float()
    return backbone


class TorchEngine(Engine):
    """Evaluate D with PyTorch. ``tile_lr`` None: any shape that meets the size rule."""

    def __init__(self, model: Denoiser, *, device: str = "cpu", precision: str = "fp32",
                 tile_lr: tuple[int, int] | None = None, cuda_graph: bool = False) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"torch engine: precision {precision!r}, expected one of {list(PRECISIONS)}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"torch engine: device {device!r} requested but CUDA is not available "
                                          "(torch.cuda.is_available() is False); use device='cpu'")
        if cuda_graph and self.device.type != "cuda":
            raise ConfigError(f"torch engine: cuda_graph=True needs a CUDA device, got {device!r}")
        model = model.eval()
        self.model = (Fp16Denoiser(model) if precision == "fp16" else model).to(self.device).eval()
        self.info = EngineInfo(backend="torch", device=str(self.device), precision=precision,
                               size_multiple=model.config.size_multiple,
                               tile_lr=None if tile_lr is None else (int(tile_lr[0]), int(tile_lr[1])),
                               batch_range=(1, 1, MAX_BATCH), scale=model.config.scale)
        self._cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple] = {}  # input shapes → (graph, static inputs, static output)

    def _run(self, x_t: np.ndarray, lq: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = [torch.from_numpy(a).to(self.device, non_blocking=True) for a in (x_t, lq, sigma)]
            if self._cuda_graph:
                out = self._replay(*inputs)
            else:
                out = self.model(inputs[0], inputs[2], inputs[1])
            return out.float().cpu().numpy()

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

    def shared_norm_statistics(self):
        if self._cuda_graph:
            raise ConfigError("torch engine: shared GroupNorm statistics use forward hooks, which CUDA graphs "
                              "do not capture; disable cuda_graph")
        from ..model.shared_norm import SharedGroupNormStats

        return SharedGroupNormStats(self.model)

    def close(self) -> None:
        self._graphs.clear()
