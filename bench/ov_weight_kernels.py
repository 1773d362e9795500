"""One [M,K]x[K,N] matmul on OpenVINO's CPU plugin, 2 threads: the INT8 path every lowered graph and NNCF's IR
take (u8 FakeQuantize activations, int8 weights) against compressed low-bit weights (u2/u4/i4 constants,
Convert/Subtract/Multiply decompression, float activations quantized by the plugin at run time with
DYNAMIC_QUANTIZATION_GROUP_SIZE) and FP32. Issue 18 item 3 asks for this before adopting any 2-bit path.

Random weights and inputs: speed only. Each shape's variants are called in turns (interleaved rounds), and
every ratio is to the INT8 path of the same shape in the same run. The runtime's node and kernel names
(runtime model's layerType/primitiveType) show which kernel each variant got.

    python bench/ov_weight_kernels.py [--rounds 5] [--json bench/results/ov-weight-kernels/run.json]

``--lowered DIR`` (an openvino-cpu artifact of a lowered ternary model compiled with ``-o unsigned=off -o
tune=off``) measures the same on the whole model instead: every ternary matmul's int8 codes become u2 codes with
zero point 1 and its activation FakeQuantize is dropped (the plugin quantizes activations at run time), against
the artifact as compiled, on real dev texts of ``--data`` (b1 real length, b1 s128, b32 s128), with the argmax
agreement and the largest output difference against the artifact.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

SHAPES = ((384, 1536), (1536, 384))  # MiniLM's FFN-in (Q/K/V/O are 384x384) and FFN-out
ROWS = (1, 16, 64, 128, 4096)
GROUPS = {"dq=off": "0", "dq=32": "32", "dq=128": "128", "dq=K": "K", "dq=token": str(2**64 - 1)}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def int8_model(ov, ops, k: int, n: int, rng):
    x = ops.parameter([-1, k], np.float32, name="x")
    q = ops.fake_quantize(x, 0.0, 4.0, 0.0, 4.0, 256)  # u8 grid, as edgekit's unsigned=on and NNCF feed it
    w = ops.constant(rng.integers(-1, 2, (n, k)).astype(np.int8))
    wf = ops.multiply(ops.convert(w, "f32"), ops.constant(np.full((n, 1), 0.02, np.float32)))
    return ov.Model([ops.matmul(q, wf, False, True)], [x])


def compressed_model(ov, ops, k: int, n: int, rng, kind: str):
    x = ops.parameter([-1, k], np.float32, name="x")
    if kind == "i4":  # ternary codes as they are: {-1, 0, 1}, no zero point
        w = ops.constant(rng.integers(-1, 2, (n, k)).astype(np.int8), dtype=ov.Type.i4)
        wf = ops.convert(w, "f32")
    else:  # u2 / u4: codes {0, 1, 2} with zero point 1
        t = ov.Type.u2 if kind == "u2" else ov.Type.u4
        w = ops.constant(rng.integers(0, 3, (n, k)).astype(np.uint8), dtype=t)
        zp = ops.constant(np.ones((n, 1), np.uint8), dtype=t)
        wf = ops.subtract(ops.convert(w, "f32"), ops.convert(zp, "f32"))
    wf = ops.multiply(wf, ops.constant(np.full((n, 1), 0.02, np.float32)))
    return ov.Model([ops.matmul(x, wf, False, True)], [x])


def fp32_model(ov, ops, k: int, n: int, rng):
    x = ops.parameter([-1, k], np.float32, name="x")
    w = ops.constant(rng.standard_normal((n, k)).astype(np.float32))
    return ov.Model([ops.matmul(x, w, False, True)], [x])


def kernels(compiled) -> str:
    names = []
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = node.get_rt_info()
        layer = rt["layerType"].astype(str)
        if layer.startswith("FullyConnected") or layer in ("MatMul", "Gemm"):
            names.append(f"{layer}[{rt['primitiveType'].astype(str)}]")
    return ", ".join(names)


def to_u2(ov, ops, model) -> int:
    """Rewrite ``model``'s ternary matmuls (int8 codes in {-1, 0, 1} -> Convert -> Multiply) to u2 codes with zero
    point 1, [N, K] as NNCF's compressed weights, reading the float input of their activation FakeQuantize."""
    n = 0
    for mm in [o for o in model.get_ordered_ops() if o.get_type_name() == "MatMul"]:
        w = mm.input(1).get_source_output().get_node()
        if w.get_type_name() != "Multiply":
            continue
        cv, sc = (w.input(i).get_source_output().get_node() for i in (0, 1))
        if cv.get_type_name() != "Convert" or sc.get_type_name() != "Constant":
            continue
        c = cv.input(0).get_source_output().get_node()
        if c.get_type_name() != "Constant" or c.get_output_element_type(0) != ov.Type.i8:
            continue
        codes = c.get_data()
        if codes.ndim != 2 or codes.min() < -1 or codes.max() > 1 or mm.get_attributes()["transpose_b"]:
            continue
        wq = ops.constant(np.ascontiguousarray((codes.T + 1).astype(np.uint8)), dtype=ov.Type.u2)
        zp = ops.constant(np.ones((codes.shape[1], 1), np.uint8), dtype=ov.Type.u2)
        scale = ops.constant(sc.get_data().reshape(-1, 1).astype(np.float32))
        wf = ops.multiply(ops.subtract(ops.convert(wq, "f32"), ops.convert(zp, "f32")), scale)
        x = mm.input(0).get_source_output()
        if x.get_node().get_type_name() == "FakeQuantize":
            x = x.get_node().input(0).get_source_output()
        new = ops.matmul(x, wf, False, True)
        new.set_friendly_name(mm.get_friendly_name())
        mm.output(0).replace(new.output(0))
        n += 1
    model.validate_nodes_and_infer_types()
    return n


def whole_model(args, ov, ops, core, base_cfg) -> dict:
    from edgekit.deploy import artifact, packing
    from edgekit.deploy.tokenizer import Tokenizer

    d = args.lowered
    manifest = artifact.read_manifest(d)
    if manifest.settings.get("fake_quantize_unsigned"):
        raise SystemExit(f"{d}: compiled with unsigned=on; compile with -o unsigned=off -o tune=off")

    def read():
        packed = manifest.settings.get("packed")
        xml = (d / manifest.model_file).read_text()
        return core.read_model(xml, ov.Tensor(packing.ir_weights(d, packed))) if packed else core.read_model(str(d / manifest.model_file))

    cfg = {**manifest.settings["config"], "INFERENCE_NUM_THREADS": str(args.threads)}
    variants = {"int8 (the artifact)": core.compile_model(read(), "CPU", cfg)}
    for group in ("0", "128", "384"):
        model = read()
        n = to_u2(ov, ops, model)
        variants[f"u2 dq={group}"] = core.compile_model(model, "CPU", {**cfg, "DYNAMIC_QUANTIZATION_GROUP_SIZE": group})
    tok = Tokenizer(d, manifest)
    rows = [json.loads(line) for line in (args.data / "dev.jsonl").read_text().splitlines()]
    order = np.random.default_rng(0).permutation(len(rows))  # the file is grouped by class: a seeded shuffle first
    real = [tok([rows[i]["text"]]) for i in order[:60]]
    long = [f for f in (tok([rows[i]["text"]]) for i in order) if f["input_ids"].shape[1] >= 128][:16]
    long = [{k: v[:, :128] for k, v in f.items()} for f in long]
    b32 = {k: np.concatenate([f[k] for f in long] * 2) for k in long[0]}
    reqs = {name: c.create_infer_request() for name, c in variants.items()}
    ref = [np.array(reqs["int8 (the artifact)"].infer(f)[0]) for f in real]
    result = {"artifact": str(d), "rewritten": n, "variants": {}}
    times = {name: {"real": [], "s128": [], "b32": []} for name in reqs}
    for _ in range(args.rounds):
        for name, req in reqs.items():
            for f in real[:10]:
                req.infer(f)
            t0 = time.perf_counter()
            for f in real:
                req.infer(f)
            times[name]["real"].append((time.perf_counter() - t0) / len(real) * 1e3)
            per = []
            for f in long:
                t0 = time.perf_counter()
                req.infer(f)
                per.append(time.perf_counter() - t0)
            times[name]["s128"].append(statistics.median(per) * 1e3)
            t0 = time.perf_counter()
            req.infer(b32)
            times[name]["b32"].append((time.perf_counter() - t0) * 1e3)
    base = {c: statistics.median(times["int8 (the artifact)"][c]) for c in ("real", "s128", "b32")}
    print(f"{d}: {n} ternary matmuls rewritten; {len(real)} real dev texts, {len(long)} of >= 128 tokens")
    for name, req in reqs.items():
        out = [np.array(req.infer(f)[0]) for f in real]
        agree = float(np.mean([a.argmax() == b.argmax() for a, b in zip(out, ref)]))
        diff = max(float(np.abs(a - b).max()) for a, b in zip(out, ref))
        ms = {c: statistics.median(times[name][c]) for c in base}
        result["variants"][name] = {"ms": ms, "x_int8": {c: ms[c] / base[c] for c in base}, "argmax_agreement": agree, "max_abs_diff": diff}
        cells = "  ".join(f"{c} {ms[c]:7.2f} ms ({ms[c] / base[c]:.2f}x)" for c in base)
        print(f"  {name:20s} {cells}  argmax agreement {agree:.3f}, max |diff| {diff:.3f}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--lowered", type=Path, help="whole-model mode: an openvino-cpu artifact of a lowered ternary model")
    ap.add_argument("--data", type=Path, default=Path("bench/data/debian-sections"), help="real texts (dev.jsonl) for --lowered")
    args = ap.parse_args()
    import openvino as ov
    from openvino import opset13 as ops

    core = ov.Core()
    rng = np.random.default_rng(0)
    base_cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(args.threads)}
    results = {"cpu": cpu_name(), "openvino": ov.__version__, "threads": args.threads, "rounds": args.rounds, "shapes": []}
    print(f"{results['cpu']}, openvino {ov.__version__}, {args.threads} threads, {args.rounds} interleaved rounds")
    if args.lowered is not None:
        results["model"] = whole_model(args, ov, ops, core, base_cfg)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
        return
    for k, n in SHAPES:
        variants = {
            "int8 (FakeQuantize u8 + i8 weights)": (int8_model(ov, ops, k, n, rng), base_cfg),
            "fp32": (fp32_model(ov, ops, k, n, rng), base_cfg),
        }
        for kind in ("u2", "u4", "i4"):
            model = compressed_model(ov, ops, k, n, rng, kind)
            for gname, group in GROUPS.items():
                variants[f"{kind} {gname}"] = (model, {**base_cfg, "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(k) if group == "K" else group})
        compiled = {}
        for name, (model, cfg) in variants.items():
            try:
                compiled[name] = core.compile_model(model, "CPU", cfg)
            except RuntimeError as e:
                print(f"  {name}: does not compile here: {str(e).splitlines()[0][:120]}")
        for m in ROWS:
            x = rng.random((m, k), dtype=np.float32) * 4
            reqs = {name: c.create_infer_request() for name, c in compiled.items()}
            times: dict[str, list[float]] = {name: [] for name in reqs}
            reps = 200 if m <= 128 else 10
            for _ in range(args.rounds):
                for name, req in reqs.items():
                    for _ in range(3):
                        req.infer({0: x})
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        req.infer({0: x})
                    times[name].append((time.perf_counter() - t0) / reps * 1e6)
            base = statistics.median(times["int8 (FakeQuantize u8 + i8 weights)"])
            row = {"K": k, "N": n, "M": m, "us": {}, "x_int8": {}, "kernel": {}}
            print(f"[{m},{k}]x[{k},{n}]")
            for name, ts in times.items():
                us = statistics.median(ts)
                row["us"][name], row["x_int8"][name], row["kernel"][name] = us, us / base, kernels(compiled[name])
                print(f"  {name:38s} {us:9.1f} us  {us / base:5.2f}x the int8 time   {row['kernel'][name]}")
            results["shapes"].append(row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
