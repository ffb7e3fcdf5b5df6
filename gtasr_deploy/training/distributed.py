"""Processes and devices of a training run: one process, or one per device under torchrun.

The environment decides: torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT,
and each process then takes its share of every global batch. The same variables left over in a
shell would silently shard a plain run (or make it wait for processes that never start), so
inconsistent sets are refused and a real multi-process run says so before it joins its group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.distributed as dist

from ..engines.device import wants_cuda
from ..errors import BackendUnavailableError, ConfigError


@dataclass(frozen=True, kw_only=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ConfigError(f"{name}={env[name]!r} in the environment is not a non-negative integer; unset it, "
                          "or launch with torchrun")
    return int(text)


def distributed_env(env: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(rank, world size) when the environment asks for a multi-process run (WORLD_SIZE > 1, as
    torchrun sets it), else None. Leftovers that cannot be a launch are refused rather than
    silently sharding the data or waiting for processes that never come."""
    world, rank = _env_int(env, "WORLD_SIZE"), _env_int(env, "RANK")
    leftover = "leftover variables of an earlier distributed launch? Unset RANK and WORLD_SIZE to train in one "\
               "process, or launch with torchrun"
    if world in (None, 1):
        if rank:
            raise ConfigError(f"RANK={rank} is set but WORLD_SIZE is {world or 'not'}: {leftover}")
        return None
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(name, "").strip()]
    if world == 0 or missing:
        raise ConfigError(f"WORLD_SIZE={world} is set" + (f" but {', '.join(missing)} not" if missing else "")
                          + f": {leftover}")
    if rank >= world:
        raise ConfigError(f"RANK={rank} is not below WORLD_SIZE={world}: {leftover}")
    return rank, world


def _cuda_device(device: str, sharded: bool) -> torch.device:
    """The GPU of this process: LOCAL_RANK's under torchrun, else the one ``device`` names."""
    count = torch.cuda.device_count()
    index = (_env_int(os.environ, "LOCAL_RANK") or 0) if sharded else int(device.partition(":")[2] or 0)
    if index >= count:
        raise BackendUnavailableError(f"run.device {device!r}: GPU {index} does not exist here ({count} visible)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def setup_distributed(device: str, say: Callable[[str], None] = print) -> Dist:
    """One process per device under torchrun (WORLD_SIZE > 1), else a single process. ``say``
    gets one line before a multi-process run joins its group (which waits for every process)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(f"run.device is {device!r} but CUDA is not available here; use \"auto\" or \"cpu\"")
    want_cuda = wants_cuda(device)
    sharded = distributed_env()
    if sharded is not None and not dist.is_initialized():
        rank, world = sharded
        say(f"distributed: process {rank} of {world} (RANK/WORLD_SIZE from the environment); each trains on its "
            f"share of every batch; waiting for all {world} at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
        dist.init_process_group("nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if want_cuda:
        return Dist(rank=rank, world=world, device=_cuda_device(device, world > 1))
    return Dist(rank=rank, world=world, device=torch.device("cpu"))
