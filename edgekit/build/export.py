"""Step ``export``: a checkpoint -> an ONNX artifact (``model.onnx`` + tokenizer + manifest).

Dynamic batch and sequence axes by default, or one static ``[batch, seq]`` shape (NPU,
fixed engines). Every export runs a parity check: PyTorch vs ONNX Runtime on real
tokenized text, enforced by :class:`~edgekit.deploy.parity.Tolerance`. PyTorch's outputs are kept
in the artifact so later compiles are checked against PyTorch too, without torch.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgekit.build.load import Encoder, load
from edgekit.deploy import artifact, data, parity
from edgekit.deploy.artifact import Manifest, Source, TensorSpec, TokenizerInfo
from edgekit.deps import require, version_of
from edgekit.errors import CheckpointError, ConfigError

MODEL_FILE = "model.onnx"
PARITY_TEXTS = 32
PARITY_BATCH = 8


class ExportOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    opset: int = Field(17, ge=17, le=21, description="ONNX opset (17 or newer)")
    static_shape: tuple[int, int] | None = Field(None, description="fixed [batch, sequence] instead of dynamic axes")
    max_length: int | None = Field(None, ge=8, description="cap on the sequence length (default: the model's)")
    tolerance: parity.Tolerance = parity.Tolerance()
    # TorchScript tracing stays the default: the torch.export-based exporter passes parity and keeps
    # the dynamic axes, but its graphs ran 4-13% slower on ONNX Runtime and export took 6-20x longer
    # (docs/agreement.md, "Exporter").
    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="torch.onnx exporter: torchscript (traced) or dynamo")

    @field_validator("static_shape")
    @classmethod
    def _positive(cls, v):
        if v is not None and (v[0] < 1 or v[1] < 4):
            raise ValueError("static_shape needs batch >= 1 and sequence >= 4")
        return v


def parse_shape(text: str | None) -> tuple[int, int] | None:
    """'1x128' -> (1, 128)."""
    if not text:
        return None
    try:
        b, s = (int(x) for x in text.lower().split("x"))
    except ValueError as err:
        raise ConfigError(f"invalid shape {text!r}", hint="write BATCHxSEQUENCE, e.g. 1x128") from err
    if b < 1 or s < 4:
        raise ConfigError(f"invalid shape {text!r}", hint="batch >= 1 and sequence >= 4")
    return b, s


def source_of(encoder: Encoder, max_length: int) -> Source:
    """What an artifact's manifest records of the checkpoint it was made from."""
    info = encoder.info
    return Source(
        path=str(info.path),
        sha256=info.sha256(),
        model_type=info.model_type,
        task=info.task,
        pooling=info.pooling,
        normalize=info.normalize,
        labels=list(info.labels) if info.labels else None,
        max_length=max_length,
    )


def parity_feed(encoder: Encoder, options: ExportOptions, max_length: int) -> dict[str, np.ndarray]:
    """Real sentences of varied lengths, padded per the export's shape."""
    texts = data.sample_texts()
    step = max(1, len(texts) // PARITY_TEXTS)
    picked = sorted(texts[::step][:PARITY_TEXTS], key=len)
    # Longer inputs too: join sentences so the check covers long sequences.
    picked[-4:] = [" ".join(texts[i : i + 12]) for i in range(0, 48, 12)]
    if options.static_shape:
        batch, seq = options.static_shape
        picked = picked[: max(batch, len(picked) // batch * batch)]
        while len(picked) < batch:
            picked.append(picked[len(picked) % PARITY_TEXTS])
        return encoder.tokenize(picked, pad_to=seq)
    return encoder.tokenize(picked, max_length=max_length)


def export(
    model: str | Path | Encoder | None,
    out: str | Path,
    options: ExportOptions = ExportOptions(),
    *,
    task: str | None = None,
    name: str | None = None,
) -> Manifest:
    """Export ``model`` (a checkpoint dir, ``default`` or a loaded :class:`Encoder`) to ``out``.

    ``name`` labels the artifact in reports (default: the output folder's name)."""
    encoder = model if isinstance(model, Encoder) else load(model, task=task)
    torch = require("torch", for_="ONNX export")
    onnx = require("onnx", for_="ONNX export")
    ort = require("onnxruntime", for_="the export parity check")
    max_length = min(options.max_length or encoder.info.max_length, encoder.info.max_length)
    if options.static_shape and options.static_shape[1] > max_length:
        raise ConfigError(
            f"static sequence {options.static_shape[1]} exceeds the model's max length {max_length}", hint=f"use a sequence <= {max_length}"
        )
    names = list(encoder.spec.input_names)
    output = encoder.output_name
    feed = parity_feed(encoder, options, max_length)
    sample = {k: v[: (options.static_shape[0] if options.static_shape else 2)] for k, v in feed.items()}
    dynamic = (
        None
        if options.static_shape
        else {
            **{n: {0: "batch", 1: "sequence"} for n in names},
            output: {0: "batch"},
        }
    )

    with artifact.staging(out) as tmp:
        onnx_path = tmp / MODEL_FILE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _torch_export(torch, encoder, sample, names, output, onnx_path, options, dynamic, max_length)
            except Exception as err:  # the exporter raises many types; keep its message
                raise CheckpointError(
                    f"ONNX export of {encoder.info.path} failed: {str(err).splitlines()[0]}",
                    hint="run with --debug for the exporter's traceback",
                ) from err
        onnx.checker.check_model(str(onnx_path))
        opset = next(o.version for o in onnx.load(str(onnx_path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
        encoder.tokenizer.save_pretrained(str(tmp / "_tok"))
        artifact.copy_tokenizer(tmp / "_tok", tmp)
        shutil.rmtree(tmp / "_tok")
        if not (tmp / "tokenizer.json").exists():
            raise CheckpointError(
                f"{encoder.info.path}: the tokenizer could not be saved as tokenizer.json", hint="use a model with a fast tokenizer"
            )

        reference = encoder.run(feed)
        parity.save_reference(tmp / parity.REFERENCE, feed, reference)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        batch = options.static_shape[0] if options.static_shape else PARITY_BATCH
        actual = parity.run_chunked(lambda f: sess.run([output], f)[0], feed, batch)
        report = parity.enforce(
            parity.compare(
                reference,
                actual,
                task=encoder.info.task,
                output=output,
                runtime=f"onnxruntime {ort.__version__}",
                tolerance=options.tolerance,
            )
        )

        shape: list[int | str] = list(options.static_shape) if options.static_shape else ["batch", "sequence"]
        width = reference.shape[-1]
        tok = encoder.tokenizer
        manifest = Manifest(
            kind="onnx",
            target="onnx",
            name=name or Path(out).name,
            created=artifact.now(),
            source=source_of(encoder, max_length),
            tokenizer=TokenizerInfo(pad_token=str(tok.pad_token), pad_id=int(tok.pad_token_id), max_length=max_length),
            model_file=MODEL_FILE,
            inputs=[TensorSpec(name=n, shape=shape, dtype="int64") for n in names],
            outputs=[TensorSpec(name=output, shape=[shape[0], width], dtype="float32")],
            static_shape=list(options.static_shape) if options.static_shape else None,
            opset=opset,
            runtime={
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "transformers": version_of("transformers") or "?",
            },
            settings={"tolerance": options.tolerance.model_dump(), "exporter": options.exporter},
            parity=report,
        )
        return artifact.write_manifest(tmp, manifest)


def _torch_export(torch, encoder: Encoder, sample, names, output, path: Path, options: ExportOptions, dynamic, max_length: int) -> None:
    """``torch.onnx.export`` with the chosen exporter; both give the same input/output names and axes."""
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    if options.exporter == "torchscript":
        torch.onnx.export(
            encoder.module,
            args,
            str(path),
            input_names=names,
            output_names=[output],
            dynamic_axes=dynamic,
            opset_version=options.opset,
            do_constant_folding=True,
            dynamo=False,
        )
        return
    require("onnxscript", for_="the dynamo ONNX exporter", hint="pip install onnxscript")
    shapes = None
    if dynamic is not None:  # forward(*inputs): one spec per positional input, under the one varargs parameter
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=max_length)
        shapes = (tuple({0: batch, 1: seq} for _ in names),)
    program = torch.onnx.export(
        encoder.module,
        args,
        input_names=names,
        output_names=[output],
        dynamic_shapes=shapes,
        opset_version=max(options.opset, 18),  # the dynamo exporter's lowest opset
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    program.save(str(path))
