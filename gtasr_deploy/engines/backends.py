"""The backends by name, each described by its engine class's :class:`~.base.BackendFacts`.

The one list of engine classes; the factory, ``--precision auto``, gtasr-check and gtasr-bench
read what a backend computes, where it runs, what installs it and which graph it needs from here
instead of restating it. Importing this imports no optional runtime (the engine modules import
theirs when an engine is opened).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import BackendFacts, Engine
from .onnxruntime import OrtEngine
from .openvino import OpenVinoEngine
from .tensorrt import TensorRTEngine
from .torch_engine import TorchEngine

ENGINE_CLASSES: tuple[type[Engine], ...] = (TorchEngine, OrtEngine, OpenVinoEngine, TensorRTEngine)
FACTS: dict[str, BackendFacts] = {cls.facts.name: cls.facts for cls in ENGINE_CLASSES}
NAMES = tuple(FACTS)  # "torch", "onnxruntime", "openvino", "tensorrt"
GRAPH_BACKENDS = tuple(name for name, facts in FACTS.items() if facts.graph)  # run an exported ONNX graph


def facts_of(backend: str) -> BackendFacts:
    """The facts of ``backend`` (a name of :data:`NAMES`), or ConfigError listing the valid names."""
    try:
        return FACTS[backend]
    except KeyError:
        raise ConfigError(f"unknown backend {backend!r}; valid backends: {', '.join(NAMES)}") from None
