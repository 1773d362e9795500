"""``edgekit quantize`` (QAT), ``edgekit lower`` (binary/ternary -> INT8 QDQ ONNX) and ``edgekit ptq``.

Each builds a plan and hands it to the runner. Several GPUs run the same command under torchrun:
``torchrun --nproc_per_node=N -m edgekit.cli quantize ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgekit.cli.console import console
from edgekit.cli.options import ModelArg

QuantCacheOpt = Annotated[Path, typer.Option(help="step cache: an interrupted QAT run resumes from it; a finished one is reused")]


def _say(message: str) -> None:
    console.print(f"[cyan]>[/] {escape(message)}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def quantize(
        model: ModelArg = None,
        data: Annotated[Path, typer.Option(help="training texts: .txt, or JSONL/CSV with 'text' (+ optional 'label')")] = ...,
        scheme: Annotated[
            str, typer.Option(help="bit-w1a1, bit-w1a8, ternary-w2a8, bibert-w1a1, bitnet-w2a8, ... (an unknown name lists them)")
        ] = "bit-w1a1",
        out: Annotated[Path, typer.Option(help="quantized checkpoint directory to write ('edgekit export' accepts it)")] = Path(
            "build/quantized"
        ),
        eval_data: Annotated[
            Path | None, typer.Option("--eval", help="labeled dev file: accuracy of the teacher and of each stage")
        ] = None,
        teacher: Annotated[str | None, typer.Option(help="teacher checkpoint (default: MODEL itself)")] = None,
        steps: Annotated[int | None, typer.Option(help="training steps per stage (or --epochs)")] = None,
        epochs: Annotated[float | None, typer.Option(help="training epochs per stage (default 3)")] = None,
        multi_step: Annotated[bool, typer.Option(help="BiT multi-step: teacher -> --intermediate student -> the final student")] = False,
        intermediate: Annotated[str, typer.Option(help="the intermediate scheme of --multi-step")] = "bit-w1a8",
        batch_size: Annotated[int, typer.Option(help="batch size (per process under torchrun)")] = 32,
        lr: Annotated[float | None, typer.Option(help="learning rate (default by weight bits: 5e-4 for 1 bit, 1e-4 for 2)")] = None,
        max_length: Annotated[int, typer.Option(help="token limit per text")] = 128,
        ce: Annotated[float | None, typer.Option(help="weight of cross entropy with the labels (default: distillation only)")] = None,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        save_dtype: Annotated[str, typer.Option(help="float32 | float16 for the saved float weights")] = "float32",
        save_every: Annotated[int, typer.Option(help="training steps between resumable checkpoints")] = 50,
        progress: Annotated[bool, typer.Option(help="show a progress bar while training")] = True,
        precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA) | fp32 | bf16")] = "auto",
        lr_scaling: Annotated[str, typer.Option(help="scale the learning rate with the batch: none | sqrt | linear")] = "none",
        deterministic: Annotated[
            bool, typer.Option(help="deterministic kernels: two runs of one seed give the same checkpoint on one machine (slower on a GPU)")
        ] = False,
        eval_every: Annotated[int | None, typer.Option(help="with --eval: score every N steps, keep each stage's best state")] = None,
        budget_mb: Annotated[
            float | None, typer.Option(help="mixed precision: 1/2/8 bits per matrix by sensitivity on --eval, to fit this size in MB")
        ] = None,
        mean_bits: Annotated[float | None, typer.Option(help="mixed precision: or this mean of weight bits (1 to 8)")] = None,
        unlabeled: Annotated[
            str | None, typer.Option(help="more texts to distil on (.txt or JSONL/CSV 'text'); no labels: distillation losses only")
        ] = None,
        augment: Annotated[int, typer.Option(help="augmented copies of each training text to distil on (0-50; TinyBERT-style)")] = 0,
        augment_method: Annotated[
            str, typer.Option(help="both | replace (words by embedding neighbours) | mask (a span by the mask token)")
        ] = "both",
        attention_bits: Annotated[
            int | None,
            typer.Option(
                help="bits of the attention core (Q, K, softmax, V; default: the scheme's); 32 keeps it in float, "
                "which ort-cpu runs as one fused INT8 QAttention per layer (-o fusion=qattention)"
            ),
        ] = None,
        cache: QuantCacheOpt = Path("build/cache"),
    ) -> None:
        """Binarize or ternarize a trained checkpoint with distillation from the float model (QAT)."""
        from edgekit.build import plan, runner
        from edgekit.build.recipe import Quantize, quantize_settings

        flags = {k: v for k, v in locals().items() if k in Quantize.model_fields}  # the flags named like the recipe's fields
        q = quantize_settings(**{**flags, "epochs": epochs if steps or epochs else 3.0})
        dev = str(eval_data) if eval_data else None
        p = plan.for_quantize(model or "default", out, str(data), q, dev=dev, cache=cache, train_progress=progress)
        result = runner.run(p, say=_say)
        for stage in result.steps[-1].summary.get("stages", []):
            acc = (stage.get("eval") or {}).get("accuracy")
            console.print(
                f"[green]{stage['scheme']}[/]: {stage['steps']} steps, {stage['seconds']:.0f}s"
                + (f", dev accuracy {acc:.4f}" if acc is not None else "")
            )
        console.print(f"quantized checkpoint -> {out} (report: {out / 'quant_report.json'}); next: edgekit export {out}")

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
        from edgekit.build import plan, runner
        from edgekit.cli.views import parity_line
        from edgekit.deploy import artifact

        runner.run(plan.for_lower(str(checkpoint), out, pack=pack), say=_say)
        m = artifact.read_manifest(out)
        low, size, int8 = m.settings["lowered"], m.settings["size"], m.settings["lowered"]["onnxruntime_int8"]
        packed = f" + {m.settings['packed']['file']}" if "packed" in m.settings else ""
        console.print(f"[green]lowered[/] {escape(low['scheme'])} -> {out}/{m.model_file}{packed}")
        if low.get("mixed"):
            widths = ", ".join(f"{n} at {b} bits" for b, n in low["modules"]["weight_bits"].items())
            console.print(f"  mixed precision: {widths} (weight matrices)")
        console.print("  " + parity_line(m.parity, against="the fake-quant model"))
        ops = ", ".join(f"{k} x{v}" for k, v in int8["integer_ops"].items())
        console.print(f"  INT8 on ONNX Runtime: {int8['integer_total']} of {int8['expected_int8']} quantized matmuls ({ops})")
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
        from edgekit.build import plan, runner
        from edgekit.cli.views import parity_line
        from edgekit.deploy import artifact

        runner.run(plan.for_ptq(model, out, str(data), samples, method=method), say=_say)
        m = artifact.read_manifest(out)
        console.print(
            f"[green]quantized[/] ({escape(m.settings['ptq']['method'])}, {m.settings['ptq']['calibration']['texts']} texts) -> {out}"
        )
        if m.parity is not None:
            console.print("  " + parity_line(m.parity))
