"""The pipeline's steps, each run through the step cache: quantize -> exits -> prune | segments |
lower | export -> ptq -> compile per target -> eval -> profile.

Every step reads its inputs (a :class:`Ref`: a path and the id its consumers' keys use) and
writes only under its own cache entry; :mod:`edgekit.build.runner` strings them together.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgekit import env
from edgekit.build.cache import Runner, Say, Step, hash_path, host_fingerprint
from edgekit.build.plan import Plan, TargetPlan
from edgekit.build.recipe import resolve_path
from edgekit.deploy import artifact
from edgekit.errors import MissingDependency


def subset(path: Path, limit: int | None, dest_dir: Path, *, skip: int = 0) -> Path:
    """Records ``skip .. skip+limit`` of a data file (the file itself when no limit)."""
    if limit is None:
        return path
    dest = dest_dir / f"rows{skip}-{skip + limit}-{path.name}"
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        for i, row in enumerate(reader):
            if i >= skip + limit:
                break
            if i >= skip:
                writer.writerow(row)
        dest.write_text(buf.getvalue(), encoding="utf-8")
    else:
        lines = [line for line in text.splitlines() if line.strip()][skip : skip + limit]
        dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def _rows(path: Path) -> int:
    from edgekit.deploy import data

    return len(data.read_texts(path))


def _lazy(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise MissingDependency(
            f"{module} is not part of this edgekit, but the recipe's step {what} needs it",
            hint=f"update edgekit, or remove steps.{what} from the recipe",
        ) from err


@dataclass
class Ref:
    """A step's input: a path and the id its consumers' keys use (content hash or step key)."""

    path: Path
    id: str

    @property
    def out(self) -> Path:  # read like a finished Step by the steps that take either
        return self.path

    @property
    def key(self) -> str:
        return self.id


@dataclass
class Pipeline:
    plan: Plan
    runner: Runner
    model: Ref  # the checkpoint the next step takes (the plan's, then the quantized one)
    data: dict[str, Ref]
    say: Say

    def quantize(self) -> None:
        q = self.plan.steps.quantize
        model, train = self.model, self.data["train"]

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.build.quant.train import TrainOptions, run

            work = entry / "work"
            resume = (work / "train_state" / "state.pt").exists()
            if resume:
                self.say(f"quantize: resuming the interrupted training in {work}")
            settings = q.model_dump(exclude={"teacher", "save_dtype"})
            opts = TrainOptions.build(
                model=str(model.path),
                data=str(train.path),
                out=str(work),
                resume=resume,
                keep_state=False,
                progress=self.plan.train_progress,
                teacher=q.teacher,
                save_dtype=q.save_dtype,
                eval_data=str(self.data["dev"].path) if "dev" in self.data else None,
                augment_cache=str(self.runner.cache / "augment"),  # generated corpora shared by every build on this cache
                **settings,
            )
            report = run(opts)  # every rank of a torchrun trains; rank 0 alone moves and records
            if env.rank() == 0:
                shutil.rmtree(entry / "checkpoint", ignore_errors=True)
                os.replace(work, entry / "checkpoint")
            keys = {"scheme", "steps", "epochs", "seconds", "loss_first", "loss_last", "start_step", "eval", "speed", "dev_curve", "corpus"}
            stages = [s.model_dump(mode="json", include=keys) for s in report.stages]
            return "checkpoint", {"scheme": q.scheme, "texts": report.texts, "device": report.device, "stages": stages}

        budget = f"{q.steps} steps" if q.steps else f"{q.epochs:g} epochs"
        step = self.runner.run(
            "quantize",
            f"quantize: {q.scheme} QAT, {budget}",
            {
                "model": model.id,
                "train": train.id,
                "dev": self.data["dev"].id if "dev" in self.data else None,
                "unlabeled": hash_path(resolve_path(q.unlabeled)) if q.unlabeled else None,  # its content, not its name
                "settings": q.model_dump(),
            },
            fn,
        )
        self.model = Ref(step.out, step.key)

    def exits(self) -> Step:
        e = self.plan.steps.exits
        model, train, calib = self.model, self.data["train"], self.data["calibration"]

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.build.exits import steps as xb
            from edgekit.build.exits.operating import DevSetTooSmall
            from edgekit.build.exits.train import TrainConfig
            from edgekit.deploy import data
            from edgekit.errors import ConfigError

            heads = entry / "heads"
            tr = subset(train.path, e.limit, entry)
            if calib.path != train.path:
                cal = subset(calib.path, e.limit, entry)
            elif e.limit and _rows(train.path) >= 2 * e.limit:
                cal = subset(train.path, e.limit, entry, skip=e.limit)  # held out from the heads' training texts
            else:
                cal = tr
                self.say("exits: calibrating on the heads' own training texts (give data.calibration, or a limit under half of data.train)")
            if e.estimate == "expected" and data.kind(cal) in ("labeled", "pairs"):  # before the heads train
                raise ConfigError(
                    "steps.exits.estimate: expected reads the final exit's probabilities in place of labels, but the "
                    "calibration texts are labelled",
                    hint="drop steps.exits.estimate (labels measure accuracy itself), or give unlabelled data.calibration",
                )
            xb.train(
                model.path,
                tr,
                heads,
                layers=e.layers,
                head_pooling=e.head_pooling,
                resume=True,
                config=TrainConfig(epochs=e.epochs, lr=e.lr, seed=e.seed, device=e.device),
                unlabeled_file=resolve_path(e.unlabeled) if e.unlabeled else None,
            )
            try:
                r = xb.calibrate(
                    heads,
                    cal,
                    heads / "calibration",
                    max_drop=e.max_drop,
                    unsupervised=data.kind(cal) not in ("labeled", "pairs"),  # pairs: recall@1 of an embedding model
                    confidence=e.confidence or None,  # 0: choose on the dev point estimate
                    groups=e.groups,
                    holdout=e.holdout,
                    queries_only=e.queries_only,
                    estimate=e.estimate,
                    temperature_data=resolve_path(e.temperature_data) if e.temperature_data else None,
                )
            except DevSetTooSmall as err:
                raise DevSetTooSmall(
                    f"steps.exits: {err.message}",
                    hint="give more calibration texts (data.calibration, or a larger steps.exits.limit), "
                    "or set steps.exits.holdout: 0 (bound on the rows searched) or steps.exits.confidence: 0 (the point estimate)",
                ) from err
            return "heads", {
                "layers": r["layers"],
                "base_quality": r["base"],
                "per_exit_quality": r["per_exit_quality"],
                "chosen": r["chosen"],
            }

        return self.runner.run(
            "exits",
            "exits: train heads, calibrate",
            {
                "model": model.id,
                "train": train.id,
                "calibration": calib.id,
                "unlabeled": hash_path(resolve_path(e.unlabeled)) if e.unlabeled else None,  # its content, not its name
                "settings": e.model_dump(),
            },
            fn,
        )

    def onnx(self) -> Step | Ref:
        """The one ONNX artifact every target compiles from (the plan's model when it is one)."""
        s, name = self.plan.steps, self.plan.name
        if self.model.id.startswith("onnx:"):
            return self.model
        if s.exits:
            heads = self.exits()
            if s.prune:
                layer = s.prune.layer or _depth_for(heads.summary, s.exits.max_drop)

                def prune(entry: Path) -> tuple[str, dict]:
                    from edgekit.build.exits import steps as xb

                    xb.prune(heads.out, layer, entry / "onnx", name=name)
                    return "onnx", {"layer": layer}

                return self.runner.run(
                    "prune", f"prune: depth cut at layer {layer}", {"heads": heads.key, "layer": layer, "name": name}, prune
                )
            policy = s.exits.policy or _chosen_policy(heads.summary)

            def segments(entry: Path) -> tuple[str, dict]:
                from edgekit.build.exits import steps as xb

                xb.export(heads.out, policy, entry / "onnx", name=name, form=form)
                return "onnx", {"policy": policy, "form": form}

            form = s.exits.form
            return self.runner.run(
                "segments",
                f"export: early exit ({ {'graph': 'one graph', 'segments': 'segments'}.get(form, 'one graph and segments') }), policy {policy}",
                {"heads": heads.key, "policy": policy, "name": name, "form": form},
                segments,
            )
        if s.lower:
            model = self.model

            def lower(entry: Path) -> tuple[str, dict]:
                mod = _lazy("edgekit.build.lower", "lower")
                m = mod.lower(model.path, entry / "onnx", pack=s.lower.pack, progress=self.say)
                return "onnx", {"precision": m.precision}

            return self.runner.run(
                "lower", "lower: quantized checkpoint -> INT8 QDQ ONNX", {"model": model.id, "settings": s.lower.model_dump()}, lower
            )
        return self.export(self.model, "export")

    def export(self, model: Ref, label: str) -> Step:
        x, task, name = self.plan.steps.export, self.plan.task, self.plan.name

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.build.export import ExportOptions, export

            tol = x.tolerance()
            opts = ExportOptions(opset=x.opset, static_shape=x.static_shape, max_length=x.max_length, **({"tolerance": tol} if tol else {}))
            m = export(model.path, entry / "onnx", opts, task=task, name=name)
            return "onnx", {"parity_max_abs_diff": m.parity.max_abs_diff if m.parity else None}

        return self.runner.run(
            "export", f"{label}: checkpoint -> ONNX", {"model": model.id, "task": task, "name": name, "settings": x.model_dump()}, fn
        )

    def ptq(self, onnx: Step | Ref) -> Step:
        p, calib = self.plan.steps.ptq, self.data["calibration"]

        def fn(entry: Path) -> tuple[str, dict]:
            mod = _lazy("edgekit.build.ptq", "ptq")
            if p.method == "nncf":  # NNCF quantizes for OpenVINO: its result is an openvino-cpu artifact
                options = next((t.options for t in self.plan.targets if t.name == "openvino-cpu"), {})
                m = mod.quantize_nncf(
                    onnx.out,
                    entry / self.plan.name / "openvino-cpu",
                    calibration=calib.path,
                    samples=p.samples,
                    options=options,
                    progress=self.say,
                )
                return f"{self.plan.name}/openvino-cpu", {"precision": m.precision, "method": "nncf"}
            m = mod.quantize_onnx(onnx.out, entry / "onnx", calibration=calib.path, samples=p.samples, progress=self.say)
            return "onnx", {"precision": m.precision}

        return self.runner.run(
            "ptq",
            f"ptq: INT8 static quantization with {p.method} ({p.samples} calibration texts)",
            {
                "onnx": onnx.key,
                "calibration": calib.id,
                "settings": p.model_dump(),
                "name": self.plan.name,
                "options": [t.options for t in self.plan.targets if p.method == "nncf" and t.name == "openvino-cpu"],
            },
            fn,
        )

    def compile(self, onnx: Step | Ref, t: TargetPlan) -> Step:
        name = self.plan.name
        options = t.options
        device_id = None
        if t.device:
            from edgekit.deploy import devices

            device_id = hash_path(devices.devices_dir() / f"{t.device}.yaml")

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.build import compile as compile_step
            from edgekit.build.exits.segments import compile_exits

            out = entry / name / t.name  # the artifact's manifest takes its name from the parent folder
            src = artifact.read_manifest(onnx.out)
            if src.exits is not None:
                m = compile_exits(onnx.out, t.name, out, options=options)
            else:
                m = compile_step.compile_artifact(
                    onnx.out, src, t.name, out, options=options, tolerance=self.plan.steps.export.tolerance_overrides()
                )
            return f"{name}/{t.name}", {"precision": m.precision, "pending": m.pending}

        file_options = {k: hash_path(Path(v)) for k, v in options.items() if isinstance(v, str) and Path(v).is_file()}
        return self.runner.run(
            f"compile:{t.name}",
            f"compile: {t.name}",
            {
                "onnx": onnx.key,
                "target": t.name,
                "options": options,
                "option_files": file_options,
                "device": t.device,
                "device_profile": device_id,
                "name": name,
                "tolerance": self.plan.steps.export.model_dump(include={"atol", "min_cosine", "min_argmax_agreement"}),
            },
            fn,
        )

    def evaluate(self, what: str, artifact_key: str, artifact_dir: Path) -> Step:
        dev = self.data["dev"]

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.build.load import torch_reference
            from edgekit.deploy.eval import evaluate

            report = evaluate(artifact_dir, dev.path, batch=16, fidelity=self.plan.fidelity, reference=torch_reference)
            artifact.write_json(entry / "eval.json", report.model_dump())
            return "eval.json", {"metrics": report.metrics, "n": report.n}

        return self.runner.run(
            f"eval:{what}",
            f"eval: {what} on {dev.path.name}",
            {"artifact": artifact_key, "dev": dev.id, "fidelity": self.plan.fidelity},
            fn,
        )

    def profile(self, what: str, artifact_key: str, artifact_dir: Path, m: artifact.Manifest) -> Step:
        p = self.plan.profile
        texts = self.data.get("profile_texts")
        static = m.static_shape is not None
        seq_len = min(p.seq_len, m.tokenizer.max_length)  # a model with a shorter limit is measured at its limit

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.deploy.profile import ProfileOptions, profile

            opts = ProfileOptions(
                seq_len=seq_len,
                seconds_per_point=p.seconds,
                min_runs=p.min_runs,
                warmup=p.warmup,
                cold_runs=p.cold_runs,
                threads=p.threads,
                batches=p.batches or (None if static else [1]),
                text_file=texts.path if texts else None,
            )
            report = profile(artifact_dir, opts)
            artifact.write_json(entry / "profile.json", report.model_dump())
            ft = report.first_token
            return "profile.json", {
                "p50_ms": ft.model_only.p50,
                "p90_ms": ft.model_only.p90,
                "seq_len": ft.seq_len,
                "e2e_p50_ms": ft.end_to_end.p50 if ft.end_to_end else None,
            }

        return self.runner.run(
            f"profile:{what}",
            f"profile: {what}",
            {
                "artifact": artifact_key,
                "settings": p.model_dump(),
                "seq_len": seq_len,
                "texts": texts.id if texts else None,
                "host": host_fingerprint(),
            },
            fn,
        )


def _chosen_policy(exits_summary: dict) -> str:
    """The calibration's chosen policy as NAME=VALUE or NAME=V1,V2,... (a per-exit vector)."""
    from edgekit.deploy.exits.policies import policy_spec
    from edgekit.errors import ConfigError

    chosen = exits_summary["chosen"]
    if chosen is None:
        raise ConfigError(
            "exits: calibration chose no exit policy (none is faster than the model without exits)",
            hint="add steps.prune for a depth cut, or give steps.exits.policy",
        )
    return policy_spec(chosen["policy"], chosen["param"])


def _depth_for(exits_summary: dict, max_drop: float) -> int:
    from edgekit.build.exits.steps import depth_for

    return depth_for({"per_exit_quality": exits_summary["per_exit_quality"], "layers": exits_summary["layers"]}, max_drop)
