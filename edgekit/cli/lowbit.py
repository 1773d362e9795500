"""CLI commands of the lowbit step, registered on the main app by :mod:`edgekit.cli.app`.

``edgekit lower CKPT --out DIR [--no-pack]``: a binary/ternary checkpoint -> INT8 QDQ ONNX.
``edgekit ptq MODEL --data TEXTS --out DIR [--method ort|nncf]``: INT8 PTQ of a float model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app`` (imports stay inside the commands)."""

    @app.command(name="lower")
    def lower_(
        checkpoint: Annotated[Path, typer.Argument(help="quantized checkpoint (written by 'edgekit quantize': has edgekit_quant.json)")],
        out: Annotated[Path, typer.Option(help="ONNX artifact directory to write")] = Path("build/lowered"),
        pack: Annotated[
            bool, typer.Option("--pack/--no-pack", help="store ternary weights in 2 bits and binary in 1 bit (unpacked at load)")
        ] = True,
    ) -> None:
        """Lower a binary/ternary checkpoint to an INT8 QDQ ONNX graph (same function, INT8 kernels).

        Checked against the fake-quant torch model and for INT8 execution on ONNX Runtime;
        compile the result like any export: edgekit compile OUT -t ort-cpu -t openvino-cpu.
        """
        from rich.markup import escape

        from edgekit.build.lower import lower
        from edgekit.cli.app import _parity_line, console

        with console.status("lower") as status:
            manifest = lower(checkpoint, out, pack=pack, progress=lambda m: status.update(f"lower: {m}"))
        low = manifest.settings["lowered"]
        size = manifest.settings["size"]
        int8 = low["onnxruntime_int8"]
        console.print(
            f"[green]lowered[/] {escape(low['scheme'])} -> {out}/{manifest.model_file}"
            + (f" + {manifest.settings['packed']['file']}" if "packed" in manifest.settings else "")
        )
        console.print("  " + _parity_line(manifest.parity).replace("PyTorch", "the fake-quant model"))
        console.print(
            f"  INT8 on ONNX Runtime: {int8['integer_total']} of {int8['expected_int8']} quantized matmuls "
            f"({', '.join(f'{k} x{v}' for k, v in int8['integer_ops'].items())})"
        )
        console.print(f"  size {size['model_bytes'] / 1e6:.2f} MB, {size['ratio_vs_fp32']:.2f}x smaller than the same graph in FP32")

    @app.command(name="ptq")
    def ptq_(
        model: Annotated[str, typer.Argument(help="FP32 checkpoint dir, 'default', or an 'edgekit export' directory")],
        data: Annotated[Path, typer.Option(help="calibration texts: .txt (one per line) or .jsonl/.csv with a 'text' field")],
        out: Annotated[
            Path, typer.Option(help="artifact directory to write (ort: an ONNX artifact; nncf: an openvino-cpu artifact)")
        ] = Path("build/ptq"),
        method: Annotated[str, typer.Option(help="ort: onnxruntime static QDQ (any target compiles it); nncf: NNCF for OpenVINO")] = "ort",
        samples: Annotated[int, typer.Option(help="calibration texts used (the first N)")] = 256,
    ) -> None:
        """INT8 post-training quantization of a full-precision model, calibrated on your texts."""
        from rich.markup import escape

        from edgekit.build import compile as step
        from edgekit.cli.app import _parity_line, console
        from edgekit.errors import ConfigError

        if method not in ("ort", "nncf"):
            raise ConfigError(f"unknown PTQ method {method!r}", hint="use --method ort (ONNX Runtime) or --method nncf (OpenVINO)")
        with console.status("ptq") as status, tempfile.TemporaryDirectory(prefix="edgekit-ptq-") as tmp:
            say = lambda m: status.update(f"ptq: {m}")  # noqa: E731
            if not step.is_artifact(model):
                say("exporting the FP32 model")
            onnx_dir, onnx_manifest = step.ensure_onnx(model, Path(tmp))
            if method == "ort":
                from edgekit.build.ptq import quantize_onnx

                manifest = quantize_onnx(onnx_dir, out, calibration=data, samples=samples, progress=say)
            else:
                say("NNCF quantization and OpenVINO compile")
                manifest = step.compile_artifact(
                    onnx_dir, onnx_manifest, "openvino-cpu", out, options={"int8": "nncf", "calibration": str(data), "samples": samples}
                )
        console.print(
            f"[green]quantized[/] ({escape(manifest.settings['ptq']['method'])}, {manifest.settings['ptq']['calibration']['texts']} texts) -> {out}"
        )
        if manifest.parity is not None:
            console.print("  " + _parity_line(manifest.parity))
