"""Conventions the whole package shares, stated once and imported everywhere (SPEC §1).

* ``SCALE``: the network upscales x4 — an HR side is ``SCALE`` times its LR side (stated in
  :mod:`gtasr_deploy.contract`, the graph contract, below even this module; re-exported here).
* Value range: images are [0, 1]; the network takes and gives [-1, 1]. :func:`to_model_range`
  maps v ↦ 2v − 1 and :func:`to_unit_range` maps x ↦ (x + 1) / 2 (not clamped: the network's
  output may leave [-1, 1]; clamp after converting).
* ``SIGMA_ONE``: one-step inference evaluates D at σ = 1 (a_K = s_K = 1), on
  x_K = up(lq) + ε (:func:`gtasr_deploy.model.schedule.one_step_start`).

Plain arithmetic on purpose: the helpers take numpy arrays, torch tensors and floats alike and
keep their dtype (a float32 array stays float32), and this module imports neither library.
"""

from __future__ import annotations

from typing import TypeVar

from ..contract import SCALE

__all__ = ["SCALE", "SIGMA_ONE", "to_model_range", "to_unit_range"]
T = TypeVar("T")

SIGMA_ONE = 1.0


def to_model_range(v: T) -> T:
    """[0, 1] image values → the network's [-1, 1]: 2v − 1."""
    return v * 2.0 - 1.0


def to_unit_range(x: T) -> T:
    """The network's [-1, 1] values → [0, 1]: (x + 1) / 2, not clamped (the halving is exact)."""
    return (x + 1.0) * 0.5
