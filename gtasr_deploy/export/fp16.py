"""FP16 conversion of an exported fp32 graph of D, keeping fp32 islands (SPEC §4).

TensorRT 10.12+ builds strongly-typed networks, so the precision of every tensor must already be
in the ONNX graph. This pass rewrites the fp32 graph from :mod:`gtasr_deploy.export.onnx`:

* fp32 islands (every float node below keeps fp32 weights and fp32 tensors):
  - ``sigma`` : nodes that depend on the inputs ``sigma``, ``norm_stats``, ``norm_mix`` only —
    c_skip/c_out/c_noise, the positional embedding, the embedding MLP and every block's embedding
    projection (``affine``), slices of the shared statistics;
  - ``tail`` : nodes that are not ancestors of the backbone's last conv (``conv_last``) — the final
    D combination c_skip·x_t + c_out·F;
  - ``group_norm`` : every node traced inside a GroupNorm (the exporter records the module class
    in each node's ``pkg.torch.onnx.class_hierarchy`` metadata): statistics, the blend with the
    shared ``norm_stats``, normalisation and affine; also the plain lowering Reshape →
    InstanceNormalization → Reshape → Mul → Add, should a graph have it;
  - ``attention`` : the bias Add and Softmax of every window attention (logits are cast to fp32
    right after QKᵀ, as ``WindowAttention.forward`` does on the fp16 torch path);
  - ``constant`` : float nodes fed by constants only, and ``not_allowed`` : float ops outside
    :data:`FP16_OPS` (a safe default: an op nobody vetted stays fp32).
* everything else runs in fp16 with fp16 weights; Cast nodes are inserted at island boundaries.

Graph inputs and outputs stay fp32. Shape-reading nodes (Shape, Size) and integer tensors are
left alone. The pass is pure ``onnx``; it never imports onnxruntime.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import EngineBuildError

if TYPE_CHECKING:  # annotations only; the package is imported on first use (_onnx)
    import onnx

FLOAT, FLOAT16 = 1, 10  # onnx.proto TensorProto.DataType FLOAT and FLOAT16 (file-format constants)
# Ops vetted to run in fp16 (all their float inputs are the one type T unless listed below).
FP16_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Sigmoid", "Tanh",
    "Relu", "LeakyRelu", "Erf", "Reshape", "Transpose", "Gather", "Concat", "Unsqueeze", "Squeeze",
    "Slice", "Split", "Expand", "Identity", "Resize", "AveragePool", "MaxPool", "DepthToSpace",
    "SpaceToDepth",
})
# Inputs of these ops that carry T; the others (Resize roi/scales) keep their own float type.
DATA_INPUTS = {"Resize": (0,)}
NEUTRAL_OPS = frozenset({"Shape", "Size"})  # read shapes only, accept any dtype
BACKBONE_LAST_CONV = "conv_last.weight"  # weight name suffix of F's last conv (network.py)
SIDE_INPUTS = frozenset({"sigma", "norm_stats", "norm_mix"})  # small inputs whose consumers stay fp32
HIERARCHY_KEY = "pkg.torch.onnx.class_hierarchy"
GROUP_NORM_CLASS = "gtasr_deploy.model.network.GroupNorm"


def _onnx():
    """The onnx package, imported on first use: it belongs to the 'onnx' extra, and the exporter's CLI
    checks for it (one line naming the extra) before converting anything."""
    import onnx

    return onnx


def _inside_group_norm(node: onnx.NodeProto) -> bool:
    return any(p.key == HIERARCHY_KEY and GROUP_NORM_CLASS in p.value for p in node.metadata_props)


@dataclass(frozen=True, kw_only=True)
class Fp16Report:
    """What the conversion did: node counts per precision and per fp32 island kind."""

    fp16_nodes: int
    fp32_nodes: int
    casts: int
    islands: dict[str, int] = field(default_factory=dict)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _consumers(nodes: list[onnx.NodeProto]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            out.setdefault(name, []).append(index)
    return out


def _only_consumer(nodes, consumers, name: str, op: str) -> int | None:
    found = consumers.get(name, [])
    return found[0] if len(found) == 1 and nodes[found[0]].op_type == op else None


def _group_norm_nodes(nodes, consumers, producer, constants) -> list[list[int]]:
    """[Reshape, InstanceNormalization, Reshape, Mul, Add] per GroupNorm; refuse other lowerings."""
    if any(n.op_type == "GroupNormalization" for n in nodes):
        raise EngineBuildError("fp16 conversion: the graph has GroupNormalization nodes, expected GroupNorm "
                               "lowered as Reshape → InstanceNormalization → Reshape → Mul → Add; "
                               "re-export with gtasr-export")
    groups = []
    for index, norm in enumerate(nodes):
        if norm.op_type != "InstanceNormalization":
            continue
        before = producer.get(norm.input[0])
        after = _only_consumer(nodes, consumers, norm.output[0], "Reshape")
        mul = None if after is None else _only_consumer(nodes, consumers, nodes[after].output[0], "Mul")
        add = None if mul is None else _only_consumer(nodes, consumers, nodes[mul].output[0], "Add")
        affine_ok = add is not None and all(any(i in constants for i in nodes[k].input) for k in (mul, add))
        if before is None or nodes[before].op_type != "Reshape" or not affine_ok:
            raise EngineBuildError(f"fp16 conversion: InstanceNormalization node {norm.name!r} is not part of "
                                   "Reshape → InstanceNormalization → Reshape → Mul → Add (GroupNorm with affine)")
        groups.append([before, index, after, mul, add])
    return groups


def _ancestors(nodes, producer, start: int) -> set[int]:
    seen, stack = set(), [start]
    while stack:
        index = stack.pop()
        if index in seen:
            continue
        seen.add(index)
        stack.extend(producer[name] for name in nodes[index].input if name in producer)
    return seen


def _input_deps(graph) -> dict[str, frozenset[str]]:
    """For every tensor, the graph inputs it depends on (nodes are topologically sorted in ONNX)."""
    deps = {vi.name: frozenset({vi.name}) for vi in graph.input}
    for node in graph.node:
        d = frozenset().union(*(deps.get(name, frozenset()) for name in node.input))
        for name in node.output:
            deps[name] = d
    return deps


def classify(model: onnx.ModelProto) -> dict[int, str]:
    """Map node index → "fp16" or the fp32 island kind, for every float node of the fp32 graph."""
    graph = model.graph
    nodes = list(graph.node)
    types = _elem_types(model)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output}
    constants = {init.name for init in graph.initializer}
    constants |= {o for n in nodes if n.op_type == "Constant" for o in n.output}
    last_conv = [i for i, n in enumerate(nodes) if n.op_type == "Conv" and n.input[1].endswith(BACKBONE_LAST_CONV)]
    if len(last_conv) != 1:
        raise EngineBuildError(f"fp16 conversion: expected one Conv with weight '*{BACKBONE_LAST_CONV}' "
                               f"(the backbone output), found {len(last_conv)}; is this a gtasr-export graph?")
    backbone = _ancestors(nodes, producer, last_conv[0])
    deps = _input_deps(graph)
    kinds: dict[int, str] = {}
    for index, node in enumerate(nodes):
        floats = [types.get(t) == FLOAT for t in (*node.input, *node.output) if t]
        if node.op_type in NEUTRAL_OPS or not any(floats):
            continue
        d = deps[node.output[0]]
        if index not in backbone:
            kinds[index] = "tail"
        elif d and d <= SIDE_INPUTS:
            kinds[index] = "sigma"
        elif _inside_group_norm(node):
            kinds[index] = "group_norm"
        elif not d:
            kinds[index] = "constant"
        else:
            kinds[index] = "fp16" if node.op_type in FP16_OPS else "not_allowed"
    for group in _group_norm_nodes(nodes, _consumers(nodes), producer, constants):
        for index in group:
            kinds[index] = "group_norm"
    for index, softmax in enumerate(nodes):
        if softmax.op_type != "Softmax":
            continue
        kinds[index] = "attention"
        bias_add = producer.get(softmax.input[0])
        if bias_add is not None and nodes[bias_add].op_type == "Add":
            kinds[bias_add] = "attention"
    return kinds


def _copy_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    out = _onnx().TensorProto()
    out.CopyFrom(tensor)
    return out


class _Rewriter:
    """Rebuilds the node list with fp16 nodes, fp16 weight copies and boundary Casts."""

    def __init__(self, model: onnx.ModelProto, kinds: dict[int, str]) -> None:
        self.graph = model.graph
        self.kinds = kinds
        self.types = _elem_types(model)
        self.inits = {init.name: init for init in self.graph.initializer}
        self.casts: dict[tuple[str, int], str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: dict[str, onnx.TensorProto] = {}

    def _fp16_initializer(self, name: str) -> str:
        new = f"{name}__fp16"
        if new not in self.new_inits:
            array = _onnx().numpy_helper.to_array(self.inits[name]).astype(np.float16)
            self.new_inits[new] = _onnx().numpy_helper.from_array(array, new)
        return new

    def _cast(self, name: str, to: int) -> str:
        key = (name, to)
        if key not in self.casts:
            out = f"{name}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
            self.nodes.append(_onnx().helper.make_node("Cast", [name], [out], name=f"cast_{out}", to=to))
            self.casts[key] = out
        return self.casts[key]

    def _convert_input(self, name: str, want: int) -> str:
        have = self.types.get(name)
        if have not in (FLOAT, FLOAT16) or have == want:
            return name
        if want == FLOAT16 and name in self.inits:
            return self._fp16_initializer(name)
        return self._cast(name, want)

    def run(self) -> None:
        for index, node in enumerate(self.graph.node):
            kind = self.kinds.get(index)
            node, original = _onnx().NodeProto(), node  # a copy: the graph's node list is rebuilt below
            node.CopyFrom(original)
            if kind is None:
                self.nodes.append(node)
                continue
            want = FLOAT16 if kind == "fp16" else FLOAT
            data = DATA_INPUTS.get(node.op_type, range(len(node.input))) if want == FLOAT16 else range(len(node.input))
            for index in data:
                if node.input[index]:
                    node.input[index] = self._convert_input(node.input[index], want)
            if want == FLOAT16:
                for name in node.output:
                    if self.types.get(name) == FLOAT:
                        self.types[name] = FLOAT16
            self.nodes.append(node)

    def finish(self) -> int:
        graph = self.graph
        for out in graph.output:
            if self.types.get(out.name) != FLOAT:
                raise EngineBuildError(f"fp16 conversion: graph output {out.name!r} would not be fp32")
        used = {name for node in self.nodes for name in node.input}
        kept = [_copy_tensor(init) for init in graph.initializer if init.name in used]
        del graph.node[:]
        graph.node.extend(self.nodes)
        del graph.initializer[:]
        graph.initializer.extend([*kept, *(t for n, t in self.new_inits.items() if n in used)])
        del graph.value_info[:]  # stale dtypes; shape inference rebuilds them
        return len(self.casts)


def convert_to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Fp16Report]:
    """fp32 graph of D → fp16 graph with fp32 islands (see module docstring). Returns a new model."""
    model = _onnx().shape_inference.infer_shapes(model)
    types = _elem_types(model)
    for vi in model.graph.input:
        if types.get(vi.name) != FLOAT:
            raise EngineBuildError(f"fp16 conversion: input {vi.name!r} is not fp32; expected an fp32 graph")
    kinds = classify(model)
    rewriter = _Rewriter(model, kinds)
    rewriter.run()
    casts = rewriter.finish()
    model = _onnx().shape_inference.infer_shapes(model)
    counts = Counter(kinds.values())
    islands = {k: v for k, v in sorted(counts.items()) if k != "fp16"}
    report = Fp16Report(fp16_nodes=counts["fp16"], fp32_nodes=sum(islands.values()), casts=casts, islands=islands)
    return model, report


def node_precisions(model: onnx.ModelProto) -> dict[str, int]:
    """node name → elem type of its first output (for structure checks and tests)."""
    types = _elem_types(_onnx().shape_inference.infer_shapes(model))
    return {node.name: types.get(node.output[0], 0) for node in model.graph.node if node.output}
