"""Export early exit for deployment: one ONNX graph per segment, or a static depth cut.

Segment ``i`` runs layers (layers[i-1], layers[i]] and exit ``i``'s head. The first also
embeds the tokens; every segment but the last passes its hidden state on. Outputs:
``hidden`` (not the last), ``output`` (logits or embedding) and, where the policy decides on
them, ``score`` (learned) or ``rep`` (similarity): a head output no decision reads is not in
the graph, so it costs nothing per call. Exits can be a subset of the trained ones
(``layers``): the segments between kept exits merge, and there are fewer boundaries.

The artifact also ships the single graph of the same model (``single.onnx``, exported and, for
a quantized model, lowered the same way as the segments; ``settings.exits.single_graph``): the
controller runs it for inputs whose exit checks are off, so they cost what the model without
exits costs. The export's parity reference holds PyTorch's *controller* result (each row's
output and exit layer, under the artifact's policy) and the final layer's output (the single
graph's reference), so every compile checks that the deployed artifact exits where PyTorch does.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from edgekit.build.exits.checks import EXACT, EXIT_REFERENCE, LOWERED, check_controller
from edgekit.build.exits.model import MultiExitModel, torch
from edgekit.build.exits.onegraph import GRAPH_FILE, check_form, export_graph, graph_spec
from edgekit.build.export import ExportOptions, parity_feed, source_of
from edgekit.deploy import artifact, packing, parity
from edgekit.deploy.artifact import ExitSpec, Manifest, SegmentSpec, TensorSpec, TokenizerInfo
from edgekit.deploy.exits.controller import SINGLE_GRAPH, graph_manifest, segment_manifest, single_graph_entry, single_manifest
from edgekit.deploy.exits.policies import Policy, simulate
from edgekit.deploy.kernels.openvino_xnor import KERNEL_DIR
from edgekit.deps import version_of
from edgekit.errors import ConfigError, TargetError

nn = torch.nn
# The head output each policy decides on, besides ``output`` (None: ``output`` itself).
DECIDES_ON: dict[str, str | None] = {"entropy": None, "margin": None, "patience": None, "learned": "score", "similarity": "rep"}


def subset(model: MultiExitModel, layers: list[int] | None) -> MultiExitModel:
    """The model with exits at ``layers`` only (their trained heads; the last layer's exit is always
    kept). Segments between kept exits merge: fewer runtime calls per input."""
    have = list(model.config.layers)
    if not layers:
        return model
    bad = [k for k in layers if k not in have]
    if bad:
        raise ConfigError(f"no exit at layer {bad[0]}", hint=f"the heads have exits at layers {have}")
    keep = sorted(set(layers) | {have[-1]})
    if len(keep) == 1:
        raise ConfigError(
            f"exits {','.join(map(str, layers))}: only the last layer's exit is left, nothing can leave early",
            hint=f"keep at least one earlier exit (the heads have {have[:-1]}), or ship the model without exits (edgekit compile)",
        )
    if keep == have:
        return model
    sub = MultiExitModel(model.encoder, keep)
    sub.heads = nn.ModuleList([model.heads[have.index(k)] for k in keep[:-1]])
    return sub.eval()


class Segment(nn.Module):
    """Layers (start, stop] plus an exit head. ``pruned``: from the embeddings, with only the
    head's output (a depth cut; at the last layer, the single graph). ``decides_on``: the head
    output the policy reads besides ``output`` (:data:`DECIDES_ON`)."""

    def __init__(self, model: MultiExitModel, idx: int, *, pruned: bool = False, decides_on: str | None = None) -> None:
        super().__init__()
        self.m, self.idx, self.pruned = model, idx, pruned
        layers = model.config.layers
        self.start = 0 if pruned else (layers[idx - 1] if idx else 0)
        self.stop = layers[idx]
        self.first = pruned or idx == 0
        self.last = pruned or idx == len(layers) - 1
        self.extra = [] if self.last or decides_on is None else [decides_on]

    def input_names(self) -> list[str]:
        return list(self.m.encoder.spec.input_names) if self.first else ["hidden_in", "attention_mask"]

    def output_names(self) -> list[str]:
        if self.pruned:
            return [self.m.encoder.output_name]
        return ([] if self.last else ["hidden"]) + ["output"] + self.extra

    def forward(self, *inputs):
        named = dict(zip(self.input_names(), inputs))
        mask = named["attention_mask"]
        hidden = self.m.embed(named) if self.first else named["hidden_in"]
        hidden = self.m.run_layers(hidden, mask, self.start, self.stop)
        o = self.m.exit_outputs(self.idx, hidden, mask)
        if self.pruned:
            return o["output"]
        return (() if self.last else (hidden,)) + (o["output"], *(o[k] for k in self.extra))


def _export(module: Segment, sample: tuple, path: Path, opset: int) -> None:
    names = module.input_names()
    dyn = {n: {0: "batch", 1: "sequence"} for n in names} | {
        "hidden": {0: "batch", 1: "sequence"},
        "hidden_in": {0: "batch", 1: "sequence"},
    }
    dyn |= {o: {0: "batch"} for o in module.output_names() if o != "hidden"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            sample,
            str(path),
            input_names=names,
            output_names=module.output_names(),
            dynamic_axes=dyn,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def quant_config(model: MultiExitModel):
    """The quantization config of the model under the heads (None: a float model)."""
    from edgekit.build.quant import quant_config_of

    return quant_config_of(model.hf)


def _lower_in_place(model: MultiExitModel, config) -> dict:
    """Swap the fake-quant modules for their QDQ forms: every segment becomes an INT8 graph."""
    from edgekit.build import lower, qdq

    lower.check_scheme(config)
    counts = qdq.lower_modules(model.encoder.module)
    return {
        "scheme": config.scheme,
        "config": config.model_dump(),
        "modules": counts,
        "reference": "fake-quant torch model (edgekit.build.quant) of the source checkpoint, with the exit heads",
    }


def torch_exits(model: MultiExitModel, feed: dict[str, np.ndarray], batch: int = 64, progress=None) -> list[dict[str, np.ndarray]]:
    """Every exit's outputs (numpy) for a tokenized feed, in batches; ``progress(done, total)`` after each."""
    rows = next(iter(feed.values())).shape[0]
    parts = []
    with torch.inference_mode():
        for i in range(0, rows, batch):
            sub = {k: torch.from_numpy(v[i : i + batch]) for k, v in feed.items()}
            parts.append([{k: v.float().numpy() for k, v in o.items()} for o in model.forward_all(sub)])
            if progress is not None:
                progress(min(i + batch, rows), rows)
    return [{k: np.concatenate([p[j][k] for p in parts]) for k in parts[0][j]} for j in range(len(parts[0]))]


def _base_manifest(model: MultiExitModel, name: str, max_length: int, width: int, tok) -> dict:
    return dict(
        kind="onnx",
        target="onnx",
        name=name,
        created=artifact.now(),
        source=source_of(model.encoder, max_length),
        tokenizer=TokenizerInfo(pad_token=str(tok.pad_token), pad_id=int(tok.pad_token_id), max_length=max_length),
        inputs=[TensorSpec(name=n, shape=["batch", "sequence"], dtype="int64") for n in model.encoder.spec.input_names],
        outputs=[TensorSpec(name=model.encoder.output_name, shape=["batch", width], dtype="float32")],
        opset=17,
        runtime={"torch": torch.__version__, "onnx": version_of("onnx") or "?", "transformers": version_of("transformers") or "?"},
    )


def _tokenizer_files(model: MultiExitModel, tmp: Path) -> None:
    model.encoder.tokenizer.save_pretrained(str(tmp / "_tok"))
    artifact.copy_tokenizer(tmp / "_tok", tmp)
    shutil.rmtree(tmp / "_tok")


def _graph(module: Segment, feed: dict[str, np.ndarray], hidden: int, path: Path, config, int8: list) -> dict | None:
    """Export one graph (a segment or the single graph) as every segment is; a quantized model's
    graph must be INT8 and its low-bit codes are packed (returns the packing record, or None)."""
    if module.first:
        sample = tuple(torch.from_numpy(feed[n][:2]) for n in module.input_names())
    else:
        sample = (torch.zeros(2, feed["attention_mask"].shape[1], hidden), torch.from_numpy(feed["attention_mask"][:2]))
    _export(module, sample, path, 17)
    return _checked(path, config, int8)


def _checked(path: Path, config, int8: list) -> dict | None:
    """A quantized model's exported graph must be INT8 (its report appended to ``int8``); its low-bit
    codes are packed (returns the packing record, or None)."""
    if config is None:
        return None
    from edgekit.build.lower import require_int8

    int8.append(require_int8(path, config.scheme))
    # binary/ternary int8 codes stored in 1/2 bits, unpacked and hash-checked at load
    return packing.pack_onnx(path, path.parent, file=path.with_suffix(".lowbit").name)


def _segment_spec(seg: Segment, model: MultiExitModel, i: int, width: int, hidden: int, packed: dict | None) -> SegmentSpec:
    shapes = {"hidden": ["batch", "sequence", hidden], "output": ["batch", width], "rep": ["batch", hidden], "score": ["batch"]}
    ins = (
        [TensorSpec(name=n, shape=["batch", "sequence"], dtype="int64") for n in seg.input_names()]
        if seg.first
        else [
            TensorSpec(name="hidden_in", shape=["batch", "sequence", hidden], dtype="float32"),
            TensorSpec(name="attention_mask", shape=["batch", "sequence"], dtype="int64"),
        ]
    )
    outs = [TensorSpec(name=n, shape=shapes[n], dtype="float32") for n in seg.output_names()]
    return SegmentSpec(model_file=f"seg{i}.onnx", up_to_layer=model.config.layers[i], inputs=ins, outputs=outs, packed=packed)


def export_segments(
    model: MultiExitModel,
    policy: Policy,
    out: str | Path,
    *,
    name: str | None = None,
    extra: dict | None = None,
    layers: list[int] | None = None,
    form: str = "segments",
    timing: bool = False,
) -> Manifest:
    """Dynamic early exit: one ONNX per segment (``form="segments"``) or the one-graph exit model
    (``form="graph"``: :mod:`edgekit.build.exits.onegraph`), the single graph, and the PyTorch
    controller reference.

    ``layers``: keep only the exits after these layers (default: every trained exit); the last
    layer's exit is always kept. ``timing`` (one graph only): calibration's timing graph, whose
    inputs ``exit_at``/``use_policy`` can force every row out at one exit (see ``onegraph.Flat``).
    """
    check_form(form)
    out = Path(out)
    model = subset(model, layers)
    max_length = model.encoder.info.max_length
    feed = parity_feed(model.encoder, ExportOptions(), max_length)
    exits = torch_exits(model, feed)
    exit_at, final = simulate(policy, exits)
    width = final.shape[-1]
    hidden = model.hf.config.hidden_size
    config = quant_config(model)
    lowered = _lower_in_place(model, config) if config is not None else None
    with artifact.staging(out) as tmp:
        segs, int8, graph = [], [], None
        if form in ("graph", "both"):
            export_graph(model, policy, feed, tmp / GRAPH_FILE, timing=timing)
            graph = graph_spec(model, GRAPH_FILE, width, _checked(tmp / GRAPH_FILE, config, int8), timing)
        for i in range(len(model.config.layers) if form in ("segments", "both") else 0):
            seg = Segment(model, i, decides_on=DECIDES_ON.get(policy.name)).eval()
            packed = _graph(seg, feed, hidden, tmp / f"seg{i}.onnx", config, int8)
            segs.append(_segment_spec(seg, model, i, width, hidden, packed))
        # the model without exits, for inputs that check none (the last exit is the model's own head)
        one = Segment(model, len(model.config.layers) - 1, pruned=True).eval()
        single = single_graph_entry("single.onnx", _graph(one, feed, hidden, tmp / "single.onnx", config, int8))
        _tokenizer_files(model, tmp)
        np.savez_compressed(
            tmp / EXIT_REFERENCE,
            output=final,
            exit_at=exit_at,
            last=exits[-1]["output"],
            **{f"input.{k}": v for k, v in feed.items()},
        )
        parity.save_reference(tmp / parity.REFERENCE, feed, final)
        spec = ExitSpec(layers=list(model.config.layers), policy=policy.name, param=policy.param, segments=segs, graph=graph)
        settings: dict = {"exits": (extra or {}) | {SINGLE_GRAPH: single}, "exit_tolerance": EXACT}
        base = _base_manifest(model, name or out.name, max_length, width, model.encoder.tokenizer)
        if lowered is not None:
            settings |= {"exit_tolerance": LOWERED, "lowered": {**lowered, "onnxruntime_int8": int8}}
            base["precision"] = "int8"
        manifest = Manifest(**base, model_file=spec.parts[0].model_file, exits=spec, settings=settings)
        manifest = artifact.write_manifest(tmp, manifest)
        check_controller(tmp, manifest, "onnx")
        return manifest


def export_pruned(model: MultiExitModel, layer: int, out: str | Path, *, name: str | None = None) -> Manifest:
    """Static early-exit pruning: layers 1..``layer`` plus that exit's head, one plain graph."""
    if layer not in model.config.layers:
        raise ConfigError(f"no exit at layer {layer}", hint=f"exits are at layers {list(model.config.layers)}")
    from edgekit.build.export import export
    from edgekit.build.load import Encoder

    idx = list(model.config.layers).index(layer)
    seg = Segment(model, idx, pruned=True).eval()

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seg = seg

        def forward(self, *inputs):
            return self.seg(*inputs)

    enc = model.encoder
    pruned = Encoder(module=Wrapped().eval(), tokenizer=enc.tokenizer, info=enc.info, spec=enc.spec)
    config = quant_config(model)
    if config is not None:  # a quantized checkpoint: the depth cut is lowered to INT8 (edgekit.build.lower)
        from edgekit.build.lower import lower_encoder

        return lower_encoder(pruned, config, out, name=name or Path(out).name, settings={"pruned_to_layer": layer})
    return export(pruned, out, name=name)


def compile_exits(onnx_dir: str | Path, target_name: str, out: str | Path, *, options: dict | None = None) -> Manifest:
    """Compile every segment and the single graph for a target and check the controller against PyTorch.

    On openvino-cpu a lowered W1A1 model's binary matmuls run as the 1-bit kernel in every part, the one graph's
    branches included (``xnor=auto`` unless ``options`` set ``xnor``); the library ships once, in ``kernels/``."""
    from edgekit.deploy import targets

    onnx_dir, out = Path(onnx_dir), Path(out)
    src = artifact.read_manifest(onnx_dir)
    if src.exits is None:
        raise ConfigError(f"{onnx_dir}: not an early-exit export", hint="use 'edgekit compile' for plain artifacts")
    target = targets.get(target_name)
    opts = targets.resolve_options(target.name, options)
    if getattr(opts, "spinning", False) is None:
        # One session per segment share the cores: ORT's spinning intra-op threads of one segment
        # steal them from the next (measured: calibration's expected latency 2x the real one with
        # spinning on). Off unless the user chose.
        opts = opts.model_copy(update={"spinning": False})
    if "xnor" in type(opts).model_fields and "xnor" not in (options or {}) and _w1a1(src):
        # The 1-bit kernel where it builds here (auto: otherwise the manifest records why not). A plain W1A1
        # artifact gets it from compile's autotune; exit artifacts are not tuned, and with it the W1E1A1 exit
        # artifact of bench/compare ran at 0.45x the time of its xnor=off compile (0.94 against 2.07 ms a text,
        # 120 real dev texts, interleaved; 0.37x at b32).
        opts = opts.model_copy(update={"xnor": "auto"})
    target.check_available()
    if target.executable_here(src) is not None or target.static_shapes:
        raise TargetError(f"dynamic early exit cannot run on {target_name} here", hint="use 'edgekit exits prune' for static-shape targets")
    bucketed = opts.sequence_buckets
    if bucketed and target.name != "openvino-cpu":  # the one target whose exit graph is measured and tested in buckets
        raise TargetError(
            f"sequence buckets (seq_lens/data) for early exit are built for openvino-cpu only, not {target_name}",
            hint="compile without seq_lens/data",
        )
    if bucketed and src.exits.segments:
        # Sequence buckets pad each input to a compiled length. The one graph runs in them like any model (on
        # openvino-cpu its If bodies then skip per-call shape work: bench/results/exits-ov-buckets); segments
        # pass the hidden state between dynamic-shape sessions (infer_linked) and drop rows that leave.
        raise TargetError(
            f"sequence buckets (seq_lens/data) run the one-graph exit form only; {onnx_dir} has {len(src.exits.segments)} segments",
            hint="export with --form graph, or compile without seq_lens/data",
        )
    with artifact.staging(out) as tmp:
        segs, fields, graph = [], {}, None
        kernels: dict[str, dict] = {}  # part -> the kernel record its compile wrote (settings.kernels.xnor)
        if src.exits.graph is not None:  # the one-graph form
            (tmp / "graph").mkdir()
            with packing.unpacked_dir(onnx_dir, graph_manifest(src)) as source:
                fields = target.compile(source, graph_manifest(src), opts, tmp / "graph")
            _take_kernel(fields, tmp, "graph", kernels)
            graph = src.exits.graph.model_copy(
                update={"model_file": f"graph/{fields['model_file']}", "packed": fields["settings"].pop("packed", None)}
            )
        for i, seg in enumerate(src.exits.segments):
            seg_manifest = segment_manifest(src, i)
            (tmp / f"seg{i}").mkdir()
            with packing.unpacked_dir(onnx_dir, seg_manifest) as source:  # packed segments: unpacked, hash-checked
                fields = target.compile(source, seg_manifest, opts, tmp / f"seg{i}")
            _take_kernel(fields, tmp, f"seg{i}", kernels)
            # a packed source gives a packed compiled segment (its weights file beside it in seg{i}/)
            seg_packed = fields["settings"].pop("packed", None)
            segs.append(seg.model_copy(update={"model_file": f"seg{i}/{fields['model_file']}", "packed": seg_packed}))
        exit_settings = dict(src.settings.get("exits") or {})
        if (one := single_manifest(src)) is not None:  # the single graph, compiled as the segments are
            (tmp / "single").mkdir()
            with packing.unpacked_dir(onnx_dir, one) as source:
                single = target.compile(source, one, opts, tmp / "single")
            _take_kernel(single, tmp, "single", kernels)
            exit_settings[SINGLE_GRAPH] = single_graph_entry(f"single/{single['model_file']}", single["settings"].get("packed"))
        artifact.copy_tokenizer(onnx_dir, tmp)
        for f in (parity.REFERENCE, EXIT_REFERENCE):
            shutil.copy2(onnx_dir / f, tmp / f)
        manifest = src.model_copy(
            update={
                "kind": "compiled",
                "target": target.name,
                "name": out.parent.name,
                "created": artifact.now(),
                "model_file": (graph or segs[0]).model_file,
                "precision": fields["precision"],
                "runtime": fields["runtime"],
                "settings": {**src.settings, **fields["settings"], **_kernel_settings(kernels), "exits": exit_settings},
                "parent": artifact.manifest_sha256(onnx_dir),
                "exits": src.exits.model_copy(update={"segments": segs, "graph": graph}),
                "files": {},
            }
        )
        check = check_controller(tmp, manifest, target.name, opts)
        manifest = manifest.model_copy(update={"settings": {**manifest.settings, "exit_parity": check}})
        return artifact.write_manifest(tmp, manifest)


def _w1a1(m: Manifest) -> bool:
    """True for a lowered model with binary weights and binary activations (what the 1-bit kernel runs)."""
    config = (m.settings.get("lowered") or {}).get("config") or {}
    return (config.get("weight_bits"), config.get("activation_bits")) == (1, 1)


def _take_kernel(fields: dict, root: Path, part: str, kernels: dict[str, dict]) -> None:
    """Move the native kernel a part's compile shipped (``<part>/kernels/``, the 1-bit kernel of openvino-cpu
    ``xnor=on``) to the artifact's ``kernels/``, where every part's session loads it from, and keep the part's
    record (``settings.kernels.xnor``) for :func:`_kernel_settings`. Every part ships the same library."""
    record = (fields["settings"].pop("kernels", None) or {}).get("xnor")
    if record is None:
        return
    kernels[part] = record
    shipped, common = root / part / KERNEL_DIR, root / KERNEL_DIR
    if not shipped.is_dir():
        return
    if not common.is_dir():
        shipped.rename(common)
        return
    for f in shipped.iterdir():
        if not (common / f.name).is_file() or artifact.sha256_file(f) != artifact.sha256_file(common / f.name):
            raise TargetError(f"{part}: its compile shipped a kernel file {f.name} unlike the other parts'", hint="recompile")
    shutil.rmtree(shipped)


def _kernel_settings(kernels: dict[str, dict]) -> dict:
    """``settings.kernels.xnor`` of an exit artifact: the library every part loads (one record), each part's
    counts under ``parts``; or, where no part uses it, the first part's reason."""
    if not kernels:
        return {}
    used = {part: r for part, r in kernels.items() if r.get("used")}
    if not used:
        return {"kernels": {"xnor": next(iter(kernels.values()))}}
    counts = ("rewritten", "kept", "fused", "attention")
    first = next(iter(used.values()))
    record = {k: v for k, v in first.items() if k not in counts}
    record |= {k: sum(r.get(k, 0) for r in used.values()) for k in counts}
    record["parts"] = {
        part: {k: r.get(k, 0) for k in counts} if r.get("used") else {"used": False, "reason": r.get("reason")}
        for part, r in kernels.items()
    }
    return {"kernels": {"xnor": record}}
