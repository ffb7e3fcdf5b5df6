"""One small error hierarchy. Messages say where, what was got, what was expected, how to fix.

The CLI prints ``str(err)`` on one line and exits non-zero for any :class:`GtasrError`;
anything else keeps its traceback (it is a bug, not a user error).
"""

from __future__ import annotations


class GtasrError(Exception):
    """Base class for every error a user can cause and fix."""


class InputError(GtasrError):
    """An input image or argument cannot be used (unreadable, unsupported, too large...)."""


class ConfigError(GtasrError):
    """A configuration (network config, tile/overlap, training recipe) is invalid."""


class CheckpointError(GtasrError):
    """A weights file is missing, corrupt, unsafe or does not match the network."""


class BackendUnavailableError(GtasrError):
    """An optional backend (onnxruntime, tensorrt, CUDA) is not installed or not usable here."""


class EngineBuildError(GtasrError):
    """Exporting a graph or building an inference engine failed."""


class OutOfMemoryError(GtasrError):
    """An image did not fit in memory even at the smallest tile and batch the pipeline can try."""
