"""Early exit in one graph: the exits' decisions and the control flow inside the ONNX model.

A segment artifact pays a runtime call, a copy of the hidden state out of the runtime's
threads and the attention-mask preprocessing at every boundary: at batch 1 and short inputs
that is about what a layer costs, so six checked exits ran 1.15-1.22x the single graph when no
row left (bench/results/early_exit_overhead). Here the whole model is one graph:

    stage 0 (embeddings, layers up to the first exit, its head, its decision)
    If every row has left:  the outputs so far
    else:                   stage 1 ... (nested the same way), the last stage's head

Each row keeps the output of the first exit it leaves at (``exit_layer`` says which), so the
decisions are the controller's per row, at any batch size; a batch stops once every row has
left (the segment controller drops rows instead, which pays more at large batches).

How it is built: the model with every exit's output and the policy's per-row decision as graph
outputs is exported by TorchScript tracing (the decisions are written in torch below, the same
arithmetic as :mod:`edgekit.deploy.exits.policies`), simplified by ONNX Runtime's *basic*
optimizations (constant folding and common subexpressions: standard ops only, so every runtime
reads the result), then cut into stages: a node belongs to the first exit whose outputs need it.
Each stage's weights are initializers of its own subgraph: as outer-scope values ONNX Runtime
ran the graph 1.12x slower than with them inside (prototype, MiniLM-L6 FP32, this CPU), and
OpenVINO would see them as body inputs rather than constants.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgekit.build.exits.model import MultiExitModel, torch
from edgekit.deploy.exits.controller import EXIT_LAYER
from edgekit.deploy.exits.policies import Policy
from edgekit.deps import require
from edgekit.errors import ConfigError

nn = torch.nn
GRAPH_FILE = "exits.onnx"
# how an exit artifact runs its exits: one graph with the decisions inside (one runtime call); one graph
# per segment run by the deploy-side controller (rows that leave are dropped from a batch); or both, the
# one graph answering single inputs and the segments batches (a third copy of the weights)
FORMS = ("graph", "segments", "both")


def check_form(form: str) -> None:
    if form not in FORMS:
        raise ConfigError(f"unknown early-exit form {form!r}", hint=f"use one of: {', '.join(FORMS)}")


TIMING_INPUTS = ("exit_at", "use_policy")  # the timing graph's extra inputs (see export_graph)
IF_NAME = "exit_if_{}"  # the If node after exit k; packing records nested weights by these names
_GLUE = "exit."  # prefix of the names this module adds to the graph


def decide(policy: Policy, k: int, o: dict, state: dict):
    """Rows that leave at exit ``k`` (bool [B]), in torch, as ``policy.leave`` decides in numpy;
    ``state`` carries the previous exit's prediction, agreement count and representation."""
    param = policy.at(k)
    out = o["output"]
    if policy.name == "entropy":
        if param <= 0:
            return torch.zeros(out.shape[0], dtype=torch.bool)
        logp = torch.log_softmax(out.float(), -1)
        entropy = -(logp.exp() * logp).sum(-1) / float(np.log(out.shape[-1]))
        return entropy < param
    if policy.name == "margin":
        top = torch.topk(torch.softmax(out.float(), -1), 2, dim=-1).values
        return top[:, 0] - top[:, 1] >= param
    if policy.name == "learned":
        return o["score"] >= param
    if policy.name == "patience":
        pred = out.argmax(-1)
        prev = state.get("pred")
        agree = torch.zeros_like(pred) if prev is None else torch.where(pred == prev, state["agree"] + 1, torch.zeros_like(pred))
        state.update(pred=pred, agree=agree)
        return agree >= param
    if policy.name == "similarity":
        rep, prev = o["rep"], state.get("rep")
        state["rep"] = rep
        return torch.zeros(rep.shape[0], dtype=torch.bool) if prev is None else (rep * prev).sum(-1) >= param
    raise ValueError(f"no in-graph decision for policy {policy.name!r}")


class Flat(nn.Module):
    """Every exit's ``output`` and (before the last) its decision, as outputs ``out{k}``, ``leave{k}``.

    ``timing``: two more inputs, ``exit_at`` (int64 scalar) and ``use_policy`` (bool scalar): a row
    leaves at exit k when the policy says so and ``use_policy``, or when k == ``exit_at``. Calibration
    times the graph forced to each exit that way; the policy's arithmetic still runs, so the timed
    graph costs what the deployed one does (two more scalar ops per exit)."""

    def __init__(self, model: MultiExitModel, policy: Policy, timing: bool = False) -> None:
        super().__init__()
        self.m, self.policy, self.timing = model, policy, timing
        self.names = list(model.encoder.spec.input_names) + (list(TIMING_INPUTS) if timing else [])

    def output_names(self) -> list[str]:
        n = len(self.m.config.layers)
        return [name for k in range(n) for name in ([f"out{k}", f"leave{k}"] if k < n - 1 else [f"out{k}"])]

    def forward(self, *inputs):
        named = dict(zip(self.names, inputs))
        mask = named["attention_mask"]
        hidden, prev, state, res = self.m.embed(named), 0, {}, []
        layers = self.m.config.layers
        for k, layer in enumerate(layers):
            hidden = self.m.run_layers(hidden, mask, prev, layer)
            prev = layer
            o = self.m.exit_outputs(k, hidden, mask)
            res.append(o["output"])
            if k < len(layers) - 1:
                leave = decide(self.policy, k, o, state)
                if self.timing:
                    leave = (leave & named["use_policy"]) | (named["exit_at"] == k)
                res.append(leave)
        return tuple(res)


def _export_flat(module: Flat, feed: dict[str, np.ndarray], path: Path) -> None:
    sample = [torch.from_numpy(feed[n][:2]) for n in module.names if n not in TIMING_INPUTS]
    if module.timing:
        sample += [torch.tensor(0, dtype=torch.int64), torch.tensor(True)]
    dyn = {n: {0: "batch", 1: "sequence"} for n in module.names if n not in TIMING_INPUTS}
    dyn |= {o: {0: "batch"} for o in module.output_names()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(sample),
            str(path),
            input_names=module.names,
            output_names=module.output_names(),
            dynamic_axes=dyn,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )


def _simplified(path: Path, dest: Path) -> None:
    """ONNX Runtime's basic optimizations of ``path`` saved to ``dest``: constants folded, shared
    subexpressions (the shape arithmetic every layer repeats) merged; standard ONNX ops only.
    Quantized weights keep their DequantizeLinear (ONNX Runtime does not fold it)."""
    ort = require("onnxruntime", for_="building the one-graph exit model")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dest)
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def stages(graph, n: int) -> list[list]:
    """The flat graph's nodes per exit: a node belongs to the first exit whose ``out``/``leave`` needs it."""
    producer = {o: node for node in graph.node for o in node.output}
    assigned: dict[int, int] = {}
    order = {id(node): i for i, node in enumerate(graph.node)}
    for k in range(n):
        stack = [f"out{k}"] + ([f"leave{k}"] if k < n - 1 else [])
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in assigned:
                continue
            assigned[id(node)] = k
            stack.extend(node.input)
    return [sorted((nd for nd in graph.node if assigned.get(id(nd)) == k), key=lambda nd: order[id(nd)]) for k in range(n)]


def nest(flat, layers: list[int], output_name: str):
    """The flat model (outputs ``out{k}``, ``leave{k}``) as one model with nested ``If`` exits;
    outputs ``output_name`` and ``exit_layer`` (int64, the layer each row left at)."""
    onnx = require("onnx", for_="building the one-graph exit model")
    from onnx import TensorProto, helper

    n, graph = len(layers), flat.graph
    parts = stages(graph, n)
    inits = {i.name: i for i in graph.initializer}
    owner: dict[str, int] = {}  # initializer -> the first stage that reads it (nested stages see it)
    for k, nodes in enumerate(parts):
        for node in nodes:
            for name in _inputs(node):
                if name in inits:
                    owner.setdefault(name, k)
    g = lambda s: _GLUE + s  # noqa: E731
    axis = helper.make_node("Constant", [], [g("axis")], value=helper.make_tensor(g("axis_v"), TensorProto.INT64, [1], [-1]))

    def const(name: str, value: int):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", TensorProto.INT64, [], [value]))

    def value(name: str, elem: int):
        return helper.make_tensor_value_info(name, elem, None)

    def stage(k: int) -> tuple[list, str, str]:
        """Stage k's nodes and what it ends with: (nodes, the final output, the exit layers)."""
        nodes = list(parts[k]) + [const(g(f"layer{k}"), layers[k])]
        out, lay = f"out{k}", g(f"layer{k}")
        if k == n - 1:  # the rows still running take the last exit
            nodes += [
                helper.make_node("Unsqueeze", [g(f"done{k - 1}"), g("axis")], [g(f"done_col{k}")]),
                helper.make_node("Where", [g(f"done_col{k}"), g(f"acc{k - 1}"), out], [g(f"acc{k}")]),
                helper.make_node("Where", [g(f"done{k - 1}"), g(f"lay{k - 1}"), lay], [g(f"lay{k}")]),
            ]
            return nodes, g(f"acc{k}"), g(f"lay{k}")
        if k == 0:
            nodes += [
                const(g("layer_last"), layers[-1]),
                helper.make_node("Identity", [out], [g("acc0")]),
                helper.make_node("Where", ["leave0", lay, g("layer_last")], [g("lay0")]),
                helper.make_node("Identity", ["leave0"], [g("done0")]),
            ]
        else:  # rows leaving now, not before, take this exit's output
            nodes += [
                helper.make_node("Not", [g(f"done{k - 1}")], [g(f"running{k}")]),
                helper.make_node("And", [f"leave{k}", g(f"running{k}")], [g(f"new{k}")]),
                helper.make_node("Unsqueeze", [g(f"new{k}"), g("axis")], [g(f"new_col{k}")]),
                helper.make_node("Where", [g(f"new_col{k}"), out, g(f"acc{k - 1}")], [g(f"acc{k}")]),
                helper.make_node("Where", [g(f"new{k}"), lay, g(f"lay{k - 1}")], [g(f"lay{k}")]),
                helper.make_node("Or", [g(f"done{k - 1}"), f"leave{k}"], [g(f"done{k}")]),
            ]
        nodes += [  # every row has left: no later stage runs
            helper.make_node("Cast", [g(f"done{k}")], [g(f"done_f{k}")], to=TensorProto.FLOAT),
            helper.make_node("ReduceMin", [g(f"done_f{k}")], [g(f"all_f{k}")], keepdims=0),
            helper.make_node("Cast", [g(f"all_f{k}")], [g(f"all{k}")], to=TensorProto.BOOL),
        ]
        then = helper.make_graph(
            [
                helper.make_node("Identity", [g(f"acc{k}")], [g(f"then_out{k}")]),
                helper.make_node("Identity", [g(f"lay{k}")], [g(f"then_lay{k}")]),
            ],
            f"exit{k}_taken",
            [],
            [value(g(f"then_out{k}"), TensorProto.FLOAT), value(g(f"then_lay{k}"), TensorProto.INT64)],
        )
        rest, rest_out, rest_lay = stage(k + 1)
        rest += [
            helper.make_node("Identity", [rest_out], [g(f"else_out{k}")]),
            helper.make_node("Identity", [rest_lay], [g(f"else_lay{k}")]),
        ]
        otherwise = helper.make_graph(
            rest,
            f"after_exit{k}",
            [],
            [value(g(f"else_out{k}"), TensorProto.FLOAT), value(g(f"else_lay{k}"), TensorProto.INT64)],
            initializer=[inits[name] for name, s in owner.items() if s == k + 1],
        )
        node = helper.make_node(
            "If", [g(f"all{k}")], [g(f"if_out{k}"), g(f"if_lay{k}")], name=IF_NAME.format(k), then_branch=then, else_branch=otherwise
        )
        return nodes + [node], g(f"if_out{k}"), g(f"if_lay{k}")

    nodes, out, lay = stage(0)
    nodes = [axis, *nodes, helper.make_node("Identity", [out], [output_name]), helper.make_node("Identity", [lay], [EXIT_LAYER])]
    top = helper.make_graph(
        nodes,
        "early_exit",
        list(graph.input),
        [
            helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", None]),
            helper.make_tensor_value_info(EXIT_LAYER, TensorProto.INT64, ["batch"]),
        ],
        initializer=[inits[name] for name, s in owner.items() if s == 0],
    )
    model = helper.make_model(top, opset_imports=list(flat.opset_import), producer_name="edgekit")
    model.ir_version = flat.ir_version
    onnx.checker.check_model(model)
    return model


def _inputs(node):
    """Every value ``node`` reads, its subgraphs' outer-scope reads included."""
    yield from node.input
    for attr in node.attribute:
        for sub in [attr.g, *attr.graphs] if attr.type in (5, 10) else []:  # GRAPH, GRAPHS
            for inner in sub.node:
                yield from _inputs(inner)


def export_graph(model: MultiExitModel, policy: Policy, feed: dict[str, np.ndarray], path: Path, *, timing: bool = False) -> None:
    """Write the one-graph exit model of ``model`` under ``policy`` to ``path`` (see the module docstring)."""
    onnx = require("onnx", for_="building the one-graph exit model")
    policy.check(len(model.config.layers))
    with tempfile.TemporaryDirectory(prefix="edgekit-onegraph-") as tmp:
        flat, simple = Path(tmp) / "flat.onnx", Path(tmp) / "simple.onnx"
        _export_flat(Flat(model, policy, timing).eval(), feed, flat)
        _simplified(flat, simple)
        nested = nest(onnx.load(str(simple)), list(model.config.layers), model.encoder.output_name)
    onnx.save(nested, str(path))


def graph_spec(model: MultiExitModel, model_file: str, width: int, packed: dict | None, timing: bool = False):
    """The manifest's ``exits.graph`` entry of the one-graph exit model (``timing``: with the timing inputs)."""
    from edgekit.deploy.artifact import SegmentSpec, TensorSpec

    extra = [TensorSpec(name="exit_at", shape=[], dtype="int64"), TensorSpec(name="use_policy", shape=[], dtype="bool")] if timing else []
    return SegmentSpec(
        model_file=model_file,
        up_to_layer=model.config.layers[-1],
        inputs=[TensorSpec(name=n, shape=["batch", "sequence"], dtype="int64") for n in model.encoder.spec.input_names] + extra,
        outputs=[
            TensorSpec(name=model.encoder.output_name, shape=["batch", width], dtype="float32"),
            TensorSpec(name=EXIT_LAYER, shape=["batch"], dtype="int64"),
        ],
        packed=packed,
    )
