"""Step ``lower``: a quantized (binary/ternary) checkpoint -> an INT8 QDQ ONNX artifact.

    edgekit lower runs/minilm-w1a1 --out build/minilm-w1a1-int8

Binary and ternary weights are exactly INT8 codes times one scale per output channel, and
8-bit or binary activations are exactly INT8 codes times the trained quantizer's scale,
so the fake-quant model of :mod:`edgekit.build.quant` is lowered without changing its function
(see :mod:`edgekit.build.qdq` for the graph): ``QuantizeLinear``/``DequantizeLinear`` around
every low-bit matmul (the six linears of each layer and, when attention is quantized, both
attention matmuls), weights stored as int8 codes. The result is an ordinary ``edgekit
export`` artifact (``kind: onnx``, precision ``int8``) that ``edgekit compile -t ort-cpu |
openvino-cpu | ort-mobile | jetson`` takes as it is.

Checks before it ships:

- parity against the *fake-quant torch model* (not a float model) on the same 32 real texts
  as every export, with :data:`TOLERANCE`;
- ONNX Runtime's optimized graph must run every quantized matmul with an integer kernel;
  a scheme it cannot (e.g. float activations: weight-only) is refused, naming the matmuls
  that would fall back to float.

With ``pack`` (the default) the int8 codes are stored bit-packed (:mod:`edgekit.deploy.packing`:
2 bits ternary, 1 bit binary), unpacked and hash-checked at load.

Mixed precision (``QuantConfig.part_bits``): the 8-bit parts are lowered the same way, INT8
codes in [-127, 127] with one scale per output channel, and stay unpacked int8; the 1- and
2-bit parts are packed as above. ``settings.lowered.modules.weight_bits`` counts the matrices
of each width.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.deploy import artifact, parity
from edgekit.deploy.artifact import Manifest
from edgekit.deps import require
from edgekit.errors import ConfigError

QUANT_FILE = "edgekit_quant.json"  # edgekit.build.quant.saving.QUANT_FILE (not imported here: that pulls in torch)

# Lowered graph vs fake-quant torch model. Integer codes are exact; only the float rounding
# order of the scales around each integer matmul differs (runtime: int32 sum * (a_s * w_s),
# or a fixed requantization when it fuses the next QuantizeLinear into QLinearMatMul; torch:
# float sum of codes * w_s * a_s), ~1e-7 relative. That moves a value sitting within a few
# ulps of a quantization boundary to the neighbouring code, which then propagates. Binary
# activations have one boundary and rarely meet it; 8-bit ones have 255, so a few codes per
# text move by one step. Measured on MiniLM-L6 (debian-sections, 32 parity texts): W1A1 max
# abs logit difference 1.2e-6, W2A8 0.095, argmax identical on both; tiny test encoders ~1e-8.
# The tolerance leaves room for such flips and still catches a real lowering error (a wrong
# scale, a transposed weight or a swapped code set moves outputs by O(1) and argmaxes at random);
# argmax may differ on at most 1 of 32 texts whose top two logits are within that noise.
# Embedding models: the same flips gave a worst-row cosine of 0.9984-0.9989 for ternary W2A8
# and W2E2A8 all-MiniLM-L6-v2 (bench/results/quant-embed); a lowering error gives far below 0.99.
# One binary flip is a large step (2x the activation scale): a BiT W1E1A1 MiniLM-L6 (debian-sections,
# 2026-12-03) lowered bit-exact on 31 of 32 parity texts and 0.294 off on one (cosine 0.996, argmax
# the same), so 1 text in 25 may exceed atol, as 1 in 25 may change its argmax; a lowering error
# moves every text.
TOLERANCE = parity.Tolerance(atol=0.25, min_argmax_agreement=0.96, min_cosine=0.995, max_rows_over_atol=0.04)


def _not_quantized(path: Path) -> ConfigError:
    return ConfigError(
        f"{path}: not a quantized edgekit checkpoint (no {QUANT_FILE}); lowering turns trained binary/ternary "
        "weights into INT8 without changing them, and a full-precision model has none",
        hint=f"for a float model use INT8 post-training quantization: edgekit ptq {path} --data texts.txt --out DIR "
        "(or train a low-bit model first: edgekit quantize)",
    )


def check_scheme(config) -> None:
    """Refuse schemes whose weights are not binary/ternary (nothing exact to lower); the 8-bit parts
    of a mixed-precision plan over such a scheme are lowered as INT8 codes."""
    if config.weight_bits not in (1, 2):
        raise ConfigError(
            f"scheme {config.scheme} has {config.weight_bits}-bit weights; lowering needs binary (1-bit) or ternary (2-bit) weights",
            hint="for 8-bit weights use INT8 post-training quantization (edgekit ptq)",
        )


def lower(checkpoint: str | Path, out: str | Path, *, pack: bool = True, progress: Callable[[str], None] | None = None) -> Manifest:
    """Lower the quantized checkpoint ``checkpoint`` to an INT8 QDQ ONNX artifact in ``out``."""
    from edgekit.build import checkpoint as ckpt
    from edgekit.build.load import load

    say = progress or (lambda msg: None)
    info = ckpt.inspect(checkpoint)
    if not (info.path / QUANT_FILE).exists():
        raise _not_quantized(info.path)
    require("torch", for_="lowering a quantized checkpoint")
    from edgekit.build.quant import quant_config_of

    say("loading the quantized checkpoint")
    encoder = load(info.path)
    config = quant_config_of(encoder.module.model)
    if config is None:
        raise _not_quantized(info.path)
    return lower_encoder(encoder, config, out, pack=pack, progress=progress, name=Path(out).name)


def lower_encoder(
    encoder,
    config,
    out: str | Path,
    *,
    pack: bool = True,
    progress: Callable[[str], None] | None = None,
    name: str | None = None,
    settings: dict | None = None,
) -> Manifest:
    """Lower a loaded encoder whose modules are edgekit's fake-quant ones (quantization ``config``).

    ``encoder.module`` may be any wrapper around them (a depth-cut model, say); its modules are
    lowered in place. ``settings`` are recorded in the manifest beside the lowering's own."""
    from edgekit.build.export import ExportOptions, export, parity_feed

    say = progress or (lambda msg: None)
    onnx = require("onnx", for_="lowering to ONNX")
    ort = require("onnxruntime", for_="the lowering parity check")
    from edgekit.build import qdq
    from edgekit.deploy import int8check, packing

    check_scheme(config)
    feed = parity_feed(encoder, ExportOptions(), encoder.info.max_length)
    reference = encoder.run(feed)  # the fake-quant torch model: what the lowered graph must compute
    counts = qdq.lower_modules(encoder.module)

    with artifact.staging(out) as tmp:
        say("exporting the QDQ graph")
        sub = tmp / "_export"
        # export checks ONNX Runtime against the lowered torch modules; the check that matters,
        # against the fake-quant model, follows with TOLERANCE.
        exported = export(encoder, sub, ExportOptions(tolerance=parity.TOLERANCES["int8"]), name=name or Path(out).name)
        (sub / artifact.MANIFEST).unlink()
        for f in sub.iterdir():
            os.replace(f, tmp / f.name)
        shutil.rmtree(sub)
        model_path = tmp / exported.model_file
        onnx.checker.check_model(str(model_path))
        model = onnx.load(str(model_path))
        quantized = int8check.quantized_matmuls(model)

        say("checking parity with the fake-quant model")
        parity.save_reference(tmp / parity.REFERENCE, feed, reference)
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        output = exported.outputs[0].name
        actual = parity.run_chunked(lambda f: sess.run([output], f)[0], feed, 8)
        report = parity.enforce(
            parity.compare(
                reference,
                actual,
                task=encoder.info.task,
                output=output,
                runtime=f"onnxruntime {ort.__version__} (lowered INT8 vs fake-quant torch)",
                tolerance=TOLERANCE,
            )
        )

        say("checking INT8 execution on ONNX Runtime")
        int8 = require_int8(model_path, config.scheme)

        codes = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)
        fp32_bytes = model_path.stat().st_size + 3 * codes  # the same graph with the codes' weights in float32
        packed = None
        if pack:
            say("packing low-bit weights")
            packed = packing.pack_onnx(model_path, tmp)
        total = sum(f.stat().st_size for f in (model_path, tmp / packing.PACKED_FILE) if f.exists())
        settings = {
            **exported.settings,
            **(settings or {}),
            "tolerance": TOLERANCE.model_dump(),
            "lowered": {
                "scheme": config.scheme,
                "config": config.model_dump(),
                "mixed": config.mixed,
                "modules": counts,
                "quantized_matmuls": len(quantized),
                "onnxruntime_int8": int8,
                "reference": "fake-quant torch model (edgekit.build.quant) of the source checkpoint",
            },
            "size": {
                "model_bytes": total,
                "int8_codes": codes,
                "fp32_equivalent_bytes": fp32_bytes,
                "ratio_vs_fp32": round(fp32_bytes / max(total, 1), 2),
            },
        }
        if packed is not None:
            settings["packed"] = packed
        manifest = exported.model_copy(update={"precision": "int8", "settings": settings, "parity": report, "created": artifact.now()})
        return artifact.write_manifest(tmp, manifest)


def require_int8(model_path: Path, scheme: str) -> dict:
    """ONNX Runtime's INT8 report for a lowered graph; refuse one with a float fallback."""
    from edgekit.deploy import int8check

    int8 = int8check.ort_report(model_path)
    if not int8["all_int8"]:
        raise ConfigError(
            f"scheme {scheme} cannot run in INT8 on ONNX Runtime: "
            + int8check.fallback_message("onnxruntime", int8)[len("onnxruntime ") :],
            hint="lowering needs quantized activations (A8, A4 or A1) on every low-bit matmul",
        )
    return int8
