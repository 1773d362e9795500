"""What a recipe names, checked on disk without torch (model, data files, targets here), and the
commented starter recipe (``edgekit recipe new``)."""

from __future__ import annotations

from pathlib import Path

from edgekit.build.recipe import Recipe, resolve_path
from edgekit.errors import ConfigError, DataError


def check_files(recipe: Recipe, source: str = "recipe") -> list[str]:
    """Check what the recipe names on disk, without torch: the model and every data file.

    Returns notes (e.g. which targets only produce plans here); raises on what is missing."""
    from edgekit.build import checkpoint
    from edgekit.deploy import data, targets

    info = checkpoint.inspect(recipe.model, task=recipe.task)
    if recipe.steps.lower and not recipe.steps.quantize and not (info.path / "edgekit_quant.json").exists():
        raise ConfigError(
            f"{source}: steps.lower needs a quantized checkpoint, and {info.path} is a float model",
            hint="add steps.quantize (QAT), or use steps.ptq for INT8 post-training quantization",
        )
    for role in ("train", "calibration", "dev"):
        value = getattr(recipe.data, role)
        if value is None:
            continue
        path = resolve_path(value)
        if not path.is_file():
            raise DataError(
                f"{source}: data.{role}: {path}: no such file", hint="fix the path (relative paths start at the working directory)"
            )
        kind = data.kind(path)
        if role == "dev" and info.task == "classifier" and kind != "labeled":
            raise DataError(
                f"{source}: data.dev: {path} has no labels, and the model is a classifier", hint="give records with 'text' and 'label'"
            )
        if role == "dev" and info.task == "embedding" and kind != "pairs" and recipe.budgets.max_accuracy_drop is not None:
            raise DataError(
                f"{source}: data.dev: {path} has no query/doc pairs, so an embedding model has no accuracy to budget",
                hint="give {'query': ..., 'doc': ...} records, or drop budgets.max_accuracy_drop",
            )
    q, e = recipe.steps.quantize, recipe.steps.exits
    for step, corpus in (("quantize", q and q.unlabeled), ("exits", e and e.unlabeled)):
        if corpus:
            from edgekit.build.quant.augment import read_unlabeled  # torch-free

            try:  # missing, empty or non-UTF-8: one line, before any step runs
                read_unlabeled(resolve_path(corpus))
            except DataError as err:
                raise DataError(f"{source}: steps.{step}.unlabeled: {err.message}", hint=err.hint) from None
    if e is not None and e.groups and e.confidence and recipe.data.calibration_file():
        try:  # every calibration row names its group
            data.read_field(resolve_path(recipe.data.calibration_file()), e.groups)
        except DataError as err:
            raise DataError(f"{source}: steps.exits.groups: {err.message}", hint=err.hint) from None
    if e is not None and e.queries_only:
        cal = recipe.data.calibration_file()
        if info.task != "embedding" or cal is None or data.kind(resolve_path(cal)) != "pairs":
            raise ConfigError(
                f"{source}: steps.exits.queries_only needs an embedding model and query/doc pairs to calibrate on "
                f"(the model is a {info.task}; data.calibration {'is ' + data.kind(resolve_path(cal)) + ' data' if cal else 'is not given'})",
                hint="drop steps.exits.queries_only, or give query/doc pairs as data.calibration",
            )
    if e is not None and e.layers:
        import json

        config = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
        depth = config.get("num_hidden_layers") or config.get("n_layers")
        if depth and max(e.layers) > depth:
            raise ConfigError(
                f"{source}: steps.exits.layers: the model has layers 1..{depth}, not {max(e.layers)}",
                hint=f"choose exit layers between 1 and {depth}",
            )
    if recipe.profile.texts and not resolve_path(recipe.profile.texts).is_file():
        raise DataError(f"{source}: profile.texts: {resolve_path(recipe.profile.texts)}: no such file", hint="fix the path")
    metric = recipe.metric_for(info.task)
    valid = ("accuracy", "macro_f1") if info.task == "classifier" else ("recall@1", "recall@10", "mrr")
    if metric not in valid:
        raise ConfigError(
            f"{source}: budgets.metric: {metric!r} is not a metric of a {info.task} model", hint=f"use one of: {', '.join(valid)}"
        )
    notes = []
    for t in recipe.targets:
        if t.options.get("data") is not None:  # sequence buckets from a texts file: missing, empty or non-UTF-8
            try:
                data.read_texts(resolve_path(str(t.options["data"])))
            except DataError as err:
                raise DataError(f"{source}: targets: {t.name}: option data: {err.message}", hint=err.hint) from None
        target = targets.get(t.name)
        try:
            target.check_available()
        except Exception as err:  # noqa: BLE001 - reported as a note: the build will say it again
            notes.append(f"{t.name}: cannot compile here: {err}")
            continue
        why = target.runs_here()
        if why is not None:
            notes.append(f"{t.name}: compiles here, runs on the device only ({why}); its accuracy and latency budgets are checked there")
    return notes


# ----------------------------------------------------------------------------- starter


TEMPLATE = """\
# edgekit recipe: `edgekit recipe check THIS.yaml` validates it, `edgekit build THIS.yaml` runs it.
# Unknown keys are errors. Relative paths start at the working directory; `edgekit:NAME`
# is a data file shipped with edgekit (pydoc_sentences.txt, pydoc_pairs.jsonl).
schema_version: 1
name: my-model                # the build goes to OUTPUT/NAME/ (dist/my-model/)
description: MiniLM embedding model, ternary W2A8, for Intel CPUs and phones
model: default                # checkpoint directory, or `default` (all-MiniLM-L6-v2)
# task: embedding             # classifier | embedding (default: detected from the checkpoint)

data:
  train: edgekit:pydoc_sentences.txt   # QAT / exit-head training texts (labels optional)
  # calibration: calib.txt             # PTQ and exit calibration (default: train)
  dev: edgekit:pydoc_pairs.jsonl       # every artifact is evaluated on it (query/doc pairs, or text+label)

steps:                        # each runs when present, in this order:
  quantize:                   # QAT with distillation from the float model
    scheme: ternary-w2a8      # ternary-w2a8, bitnet-w2a8, bit-w1a8, bit-w1a1, bibert-w1a1, ...
    steps: 40                 # training budget: steps or epochs (about 1.5 s/step for MiniLM at batch 32 on 2 CPU cores)
    limit: 1280               # train on the first N texts only
    batch_size: 32
    max_length: 128
  # exits:                    # early exit: heads trained by self-distillation, calibrated
  #   layers: [2, 4, 6]
  #   max_drop: 1.0           # points the calibrated exit may lose
  # prune: {}                 # static depth cut at the calibrated exit (or layer: N)
  # lower: {pack: true}       # quantized checkpoint -> INT8 QDQ ONNX (edgekit.build.lower)
  # ptq: {samples: 256}       # or, for a float model: INT8 post-training quantization
  export:
    opset: 17
    # static_shape: 1x128     # fixed shape (default: dynamic batch and sequence)

targets:                      # `edgekit targets` lists them; options as in `edgekit compile -o`
  - openvino-cpu
  - name: ort-mobile
    device: android-arm64     # device profile (devices/*.yaml): records its execution providers
  # - name: openvino-npu
  #   device: intel-core-ultra-npu
  #   options: {seq_lens: [64, 128]}

budgets:                      # a failed budget: exit code 3 (the CI gate), failing figures printed
  max_accuracy_drop: 3.0      # points below the FP32 checkpoint on data.dev
  # metric: mrr               # accuracy | macro_f1 (classifiers); mrr | recall@1 | recall@10 (pairs)
  max_p50_ms:                 # batch-1 latency at profile.seq_len, checked where this machine is that device
    x86-64-cpu: 50
  max_size_mb: 40             # model files of each artifact

profile:
  seq_len: 128
  seconds: 1.0

output: dist                  # dist/my-model/<target>/ + manifest.json
cache: build/cache            # step cache; `edgekit build --no-cache` ignores it
"""


def write_template(path: Path, *, force: bool = False) -> None:
    """Write the commented starter recipe to ``path`` (an existing file only with ``force``)."""
    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(f"{path}: already exists", hint="pass --force to overwrite it, or another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(TEMPLATE)
    except OSError as err:
        raise ConfigError(f"{path}: cannot write ({err.strerror})", hint="choose a writable path") from err
