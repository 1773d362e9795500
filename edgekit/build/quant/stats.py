"""Figures for the quantization report: per-layer weight distributions, activation
scales, and theoretical FLOPs / size savings computed the way BiBERT reports them.

FLOPs (BiBERT, following Bi-Real Net / ReActNet): an operation between two operands of
b1 and b2 bits (both <= 8) costs b1 * b2 / 64 FLOPs per multiply-accumulate, so a binary
op (BOP) counts 1/64 FLOP, W1A8 8/64, W2A8 16/64; any operation with a 32-bit operand
counts 1. FLOPs = 2 * sum(MACs * cost) over the encoder linears (weight x activation
bits), the attention matmuls (activation x activation bits: Q K^T and A V), and the
full-precision head. Embedding lookups, LayerNorm, softmax and GELU are not counted, as
in the papers. BERT-base at 128 tokens gives 22.5 GFLOPs in full precision, BiBERT's figure.

Size: bits of every parameter; quantized matrices cost their bits per weight plus one
32-bit scale per row; biases, LayerNorms, the head and float embeddings stay 32-bit.
"""

from __future__ import annotations

import torch

from edgekit.build.quant.api import quant_config_of, quantizers
from edgekit.build.quant.config import QuantConfig
from edgekit.build.quant.layout import hf_model_of
from edgekit.build.quant.modules import QuantEmbedding, QuantLinear
from edgekit.build.quant.quantizers import ElasticBinary, LSQActivation

SEQ_LEN = 128
FORMULA = (
    "FLOPs = 2 * sum(MACs * cost), cost = b1*b2/64 when both operands have <= 8 bits (a binary op, BOP, is 1/64 FLOP), "
    "else 1; over encoder linears (W x A bits), attention matmuls (A x A bits) and the float head. "
    "Size = sum(params * bits) + one 32-bit scale per quantized row; biases, LayerNorm, head at 32 bits."
)


def _cost(b1: int, b2: int) -> float:
    return 1.0 if max(b1, b2) >= 32 else b1 * b2 / 64


def _dims(cfg) -> dict:
    get = lambda *names: next(getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None)  # noqa: E731
    return dict(
        hidden=get("hidden_size", "dim"),
        inter=get("intermediate_size", "hidden_dim"),
        layers=get("num_hidden_layers", "n_layers"),
        vocab=get("vocab_size"),
        positions=get("max_position_embeddings"),
        types=getattr(cfg, "type_vocab_size", 0) or 0,
        labels=getattr(cfg, "num_labels", 0) or 0,
    )


def savings(hf_config, qcfg: QuantConfig | None, *, seq_len: int = SEQ_LEN, classifier: bool = True) -> dict:
    """Theoretical FLOPs and size of the float and quantized model, and their ratios."""
    d = _dims(hf_config)
    h, i, n, L = d["hidden"], d["inter"], d["layers"], seq_len
    q = qcfg or QuantConfig()
    wb, ab, eb, tb = q.weight_bits, q.activation_bits, q.embedding_bits, q.attention_bits
    linear_macs = n * (4 * L * h * h + 2 * L * h * i)
    attn_macs = n * 2 * L * L * h
    head_macs = (h * h + h * d["labels"]) if classifier else 0  # pooler + classifier (counted per sequence)
    fp_flops = 2 * (linear_macs + attn_macs + head_macs)
    q_flops = 2 * (linear_macs * _cost(wb, ab) + attn_macs * _cost(tb, tb) + head_macs)
    linear_params = n * (4 * h * h + 2 * h * i)
    linear_rows = n * (4 * h + h + i)
    emb_params = (d["vocab"] + d["positions"] + d["types"]) * h
    emb_rows = d["vocab"] + d["positions"] + d["types"]
    other = n * (4 * h + i + h + 4 * h) + 2 * h + head_macs + h + d["labels"]  # biases, LayerNorms, head
    fp_bits = 32 * (linear_params + emb_params + other)
    q_bits = (
        (linear_params * wb + (32 * linear_rows if wb < 32 else 0)) + (emb_params * eb + (32 * emb_rows if eb < 32 else 0)) + 32 * other
    )
    return {
        "seq_len": L,
        "formula": FORMULA,
        "fp32_gflops": fp_flops / 1e9,
        "quant_gflops": q_flops / 1e9,
        "flops_saving": fp_flops / q_flops,
        "fp32_mb": fp_bits / 8e6,
        "quant_mb": q_bits / 8e6,
        "size_saving": fp_bits / q_bits,
    }


@torch.no_grad()
def weight_distribution(model) -> list[dict]:
    """Per quantized matrix: fractions of codes -1 / 0 / +1 and the mean scale."""
    rows = []
    for name, mod in hf_model_of(model).named_modules():
        if isinstance(mod, (QuantLinear, QuantEmbedding)) and getattr(mod, "weight_quant", None) is not None:
            codes, scale = mod.weight_quant.split(mod.weight.detach().float())
            total = codes.numel()
            rows.append(
                {
                    "module": name,
                    "bits": mod.weight_quant.bits,
                    "shape": list(mod.weight.shape),
                    "frac_neg": float((codes < 0).sum()) / total,
                    "frac_zero": float((codes == 0).sum()) / total,
                    "frac_pos": float((codes > 0).sum()) / total,
                    "mean_scale": float(scale.float().mean()),
                }
            )
    return rows


@torch.no_grad()
def activation_scales(model) -> list[dict]:
    """Per activation quantizer: its learned or calibrated scale (and BiT's threshold)."""
    rows = []
    for name, q in quantizers(hf_model_of(model)):
        if isinstance(q, ElasticBinary):
            rows.append(
                {
                    "quantizer": name,
                    "kind": "elastic-{0,1}" if q.two_set else "elastic-{-1,+1}",
                    "alpha": float(q.alpha.abs()),
                    "beta": float(q.beta),
                }
            )
        elif isinstance(q, LSQActivation):
            rows.append(
                {
                    "quantizer": name,
                    "kind": f"{'lsq' if q.learned else 'calibrated'}-{q.bits}bit-{'signed' if q.signed else 'unsigned'}",
                    "scale": float(q.scale.abs()),
                }
            )
    return rows


def describe(model, *, classifier: bool, seq_len: int = SEQ_LEN) -> dict:
    hf = hf_model_of(model)
    qcfg = quant_config_of(model) or quant_config_of(hf)
    saved = savings(hf.config, qcfg, seq_len=seq_len, classifier=classifier)
    if qcfg is not None and qcfg.part_bits:  # a mixed plan: the size of its parts' own bits, not the scheme's
        from edgekit.build.quant.sensitivity import model_bytes

        saved["quant_mb"] = model_bytes(model, qcfg) / 1e6
        saved["size_saving"] = saved["fp32_mb"] / saved["quant_mb"]
    return {
        "scheme": qcfg.scheme if qcfg else "fp32",
        "config": qcfg.model_dump() if qcfg else None,
        "savings": saved,
        "weights": weight_distribution(model),
        "activations": activation_scales(model),
    }


class GpuMonitor:
    """Samples the GPU's utilisation (percent) in a thread while a stage trains.

    ``torch.cuda.utilization()`` where it works (it needs NVML bindings), else ``nvidia-smi``; on the
    CPU, or where neither answers, :attr:`samples` stays empty. ``summary()`` gives mean/max and the
    peak memory torch allocated."""

    def __init__(self, device, every: float = 0.5) -> None:
        self.device, self.every = device, every
        self.samples: list[float] = []
        self.source: str | None = None
        self._stop = None
        self._thread = None

    def _probe(self):
        import shutil
        import subprocess

        try:
            torch.cuda.utilization(self.device)
            return "torch.cuda.utilization", lambda: float(torch.cuda.utilization(self.device))
        except Exception:  # noqa: BLE001 - no NVML bindings: try nvidia-smi
            pass
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return None, None
        cmd = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(self.device.index or 0)]

        def read() -> float:
            return float(subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout.split()[0])

        try:
            read()
        except Exception:  # noqa: BLE001 - nvidia-smi present but not answering
            return None, None
        return "nvidia-smi", read

    def __enter__(self) -> GpuMonitor:
        import threading

        if self.device.type != "cuda":
            return self
        torch.cuda.reset_peak_memory_stats(self.device)
        self.source, read = self._probe()
        if read is None:
            return self
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(self.every):
                try:
                    self.samples.append(read())
                except Exception:  # noqa: BLE001 - a failed sample is skipped
                    pass

        self._thread = threading.Thread(target=loop, name="gpu-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None

    def summary(self) -> dict:
        if self.device.type != "cuda":
            return {}
        out = {"gpu_memory_gb": round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)}
        if self.samples:
            out |= {
                "gpu_util_mean": round(sum(self.samples) / len(self.samples), 1),
                "gpu_util_max": max(self.samples),
                "util_source": self.source,
            }
        return out
