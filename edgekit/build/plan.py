"""One typed plan for every command: a recipe, or a command's flags, become a frozen :class:`Plan`.

A plan names the model, the data, the steps with their settings, each target with its device
profile applied and its options validated once (by the target's own options model), what is
evaluated and profiled, where the results go and in which layout. :func:`edgekit.build.runner.run`
executes any plan; commands only parse flags, build a plan and print what the runner returns.

Layouts (where the runner puts results):

- ``build``: ``OUTPUT/NAME/`` with one folder per target, ``reports/`` and the build manifest,
  staged and renamed into place whole (``edgekit build``, ``edgekit quickstart``);
- ``targets``: ``OUT/<target>/`` each replaced on its own, plus ``OUT/onnx/`` when the plan
  exported (``edgekit compile``, ``edgekit exits compile``): other targets in OUT stay;
- ``checkpoint``: the quantized checkpoint at ``OUT`` (``edgekit quantize``);
- ``onnx``: the ONNX artifact at ``OUT`` (``edgekit export``, ``lower``, ``ptq``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.build.recipe import SHIPPED_PREFIX, Budgets, Data, Export, Profile, Recipe, Steps, resolve_path
from edgekit.errors import ConfigError, first_error

Layout = Literal["build", "targets", "checkpoint", "onnx"]


class _M(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TargetPlan(_M):
    """One target of a plan: options resolved once (device profile applied, shipped paths resolved)."""

    name: str
    device: str | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the target's options model")
    precision: str = "fp32"
    static_shapes: bool = False


class Plan(_M):
    source: str = Field(description="the recipe file, or the command that made the plan")
    name: str
    model: str = Field(description="checkpoint directory, 'default', or an ONNX artifact directory")
    task: Literal["classifier", "embedding"] | None = None
    data: Data = Data()
    steps: Steps = Steps()
    targets: tuple[TargetPlan, ...] = ()
    budgets: Budgets = Budgets()
    profile: Profile | None = Field(None, description="None: nothing is profiled")
    evaluate: bool = Field(False, description="evaluate every artifact that runs here (and the FP32 baseline) on data.dev")
    fidelity: bool = Field(False, description="evaluation also compares with the source PyTorch model (needs torch)")
    output: Path
    cache: Path | None = Field(None, description="step cache; None: a temporary one, removed afterwards")
    layout: Layout = "build"
    train_progress: bool = True
    skipped: dict[str, str] = Field(default_factory=dict, description="targets left out of the plan, and why")
    targets_in_recipe: tuple[str, ...] = Field((), description="every target the recipe names (a build may take a subset)")
    origin: dict[str, Any] = Field(
        default_factory=dict, description="what the plan was made from (recipe path and hashes), for the build manifest"
    )


def resolve_target(name: str, options: dict[str, Any] | None = None, device: str | None = None) -> TargetPlan:
    """Validate one target's options once, with its device profile applied (one-line errors)."""
    from edgekit.deploy import targets

    opts = {k: (str(resolve_path(v)) if isinstance(v, str) and v.startswith(SHIPPED_PREFIX) else v) for k, v in (options or {}).items()}
    profile = None
    if device:
        from edgekit.deploy import devices

        profile = devices.get(device)
    resolved = targets.resolve_options(name, opts, profile)
    cls = targets.TARGETS[name]
    explicit = resolved.model_dump(exclude_unset=True, mode="json")
    return TargetPlan(name=name, device=device, options=explicit, precision=resolved.build_precision, static_shapes=cls.static_shapes)


def _targets_of(recipe: Recipe, source: str, names: list[str] | None) -> tuple[TargetPlan, ...]:
    chosen = list(recipe.targets)
    if names:
        mine = {t.name: t for t in recipe.targets}
        unknown = [n for n in names if n not in mine]
        if unknown:
            raise ConfigError(
                f"{source}: --targets {unknown[0]!r} is not one of the recipe's targets", hint=f"its targets: {', '.join(mine)}"
            )
        chosen = [mine[n] for n in dict.fromkeys(names)]
    plans = []
    for i, t in enumerate(recipe.targets):
        if t not in chosen:
            continue
        try:
            plans.append(resolve_target(t.name, t.options, t.device))
        except ConfigError as err:
            raise ConfigError(f"{source}: targets[{i}]: {err.message}", hint=err.hint) from err
    return tuple(plans)


def from_recipe(recipe: Recipe, source: str | Path, *, targets: list[str] | None = None) -> Plan:
    """The plan of ``edgekit build RECIPE`` (``targets``: a subset of the recipe's)."""
    source = str(source)
    plans = _targets_of(recipe, source, targets)
    return Plan(
        source=source,
        name=recipe.name,
        model=recipe.model,
        task=recipe.task,
        data=recipe.data,
        steps=recipe.steps,
        targets=plans,
        budgets=recipe.budgets,
        profile=recipe.profile if recipe.profile.enabled else None,
        evaluate=recipe.data.dev is not None,
        output=Path(recipe.output) / recipe.name,
        cache=Path(recipe.cache),
        origin=_origin(recipe, Path(source)),
        targets_in_recipe=tuple(t.name for t in recipe.targets),
    )


def _origin(recipe: Recipe, path: Path) -> dict[str, Any]:
    from edgekit.build.cache import hash_path

    return {
        "name": recipe.name,
        "path": str(path.resolve()),
        "sha256": recipe.sha256(),
        "file_sha256": hash_path(path) if path.is_file() else None,
        "description": recipe.description,
    }


def export_settings(
    static_shape: str | None = None,
    max_length: int | None = None,
    atol: float | None = None,
    min_cosine: float | None = None,
    min_agreement: float | None = None,
) -> Export:
    """The export step's settings from a command's flags (one-line errors); the parity fields a command gives
    are laid over each compile's own tolerance."""
    from pydantic import ValidationError

    from edgekit.build.validation import describe_error

    try:
        return Export(
            static_shape=static_shape, max_length=max_length, atol=atol, min_cosine=min_cosine, min_argmax_agreement=min_agreement
        )
    except ValidationError as err:
        line, _ = describe_error(err, Export)
        raise ConfigError(f"invalid export option: {line}", hint="see the command's --help") from None


def for_compile(
    model: str,
    out: Path,
    targets: list[tuple[str, dict[str, Any]]],
    *,
    device: str | None = None,
    task: str | None = None,
    export: Export | None = None,
    cache: Path | None = None,
) -> Plan:
    """``edgekit compile`` / ``edgekit exits compile``: export (unless ``model`` is an ONNX artifact), then each target."""
    plans = tuple(resolve_target(name, options, device) for name, options in targets)
    return Plan(
        source="edgekit compile",
        name=Path(out).resolve().name,
        model=model,
        task=task,
        steps=Steps(export=export or Export()),
        targets=plans,
        output=Path(out),
        cache=cache,
        layout="targets",
    )


def for_export(model: str, out: Path, *, task: str | None = None, export: Export | None = None) -> Plan:
    return Plan(
        source="edgekit export",
        name=Path(out).resolve().name,
        model=model,
        task=task,
        steps=Steps(export=export or Export()),
        output=Path(out),
        layout="onnx",
    )


def for_quickstart(model: str, out: Path, *, eval_data: str, profile: Profile, cache: Path | None = None) -> Plan:
    """``edgekit quickstart``: export, every target whose artifacts run here, eval with fidelity, profile."""
    names, skipped = usable_targets(must_run=True)
    from edgekit.deploy import data

    sample = str(data.shipped(data.SAMPLE_TEXTS))
    plans = tuple(resolve_target(n, {"data": sample} if _static(n) else {}) for n in names)
    out = Path(out)
    return Plan(
        source="edgekit quickstart",
        name=out.resolve().name,
        model=model,
        data=Data(dev=eval_data),
        targets=plans,
        profile=profile,
        evaluate=True,
        fidelity=True,
        output=out,
        cache=cache,
        layout="build",
        skipped=skipped,
    )


def for_quantize(
    model: str, out: Path, train: str, quantize, *, cache: Path | None, dev: str | None = None, train_progress: bool = True
) -> Plan:
    """``edgekit quantize``: QAT only; the quantized checkpoint goes to ``out``."""
    if quantize.budget_mb is not None or quantize.mean_bits is not None:  # mixed precision: checked before any step runs
        from edgekit.build.quant.sensitivity import check_plan_inputs

        if not dev:
            flag = "--budget-mb" if quantize.budget_mb is not None else "--mean-bits"
            raise ConfigError(f"{flag} needs a dev set: the sensitivity of each part is scored on it", hint="pass --eval DEV")
        check_plan_inputs(model, quantize.scheme, budget_mb=quantize.budget_mb, mean_bits=quantize.mean_bits)
    if getattr(quantize, "unlabeled", None):
        from edgekit.build.quant.augment import read_unlabeled

        read_unlabeled(quantize.unlabeled)  # a missing, empty or non-UTF-8 corpus fails here, before any step runs
    return Plan(
        source="edgekit quantize",
        name=Path(out).resolve().name,
        model=model,
        data=Data(train=train, dev=dev),
        steps=Steps(quantize=quantize),
        output=Path(out),
        cache=cache,
        layout="checkpoint",
        train_progress=train_progress,
    )


def for_lower(checkpoint: str, out: Path, *, pack: bool = True) -> Plan:
    from edgekit.build.recipe import Lower

    return Plan(
        source="edgekit lower",
        name=Path(out).resolve().name,
        model=checkpoint,
        steps=Steps(lower=Lower(pack=pack)),
        output=Path(out),
        layout="onnx",
    )


def for_ptq(model: str, out: Path, calibration: str, samples: int, *, method: str = "ort") -> Plan:
    """``edgekit ptq``: the FP32 export quantized to INT8 at ``out`` (ort: a static QDQ ONNX graph;
    nncf: an openvino-cpu artifact)."""
    from pydantic import ValidationError

    from edgekit.build.recipe import Ptq

    try:
        ptq = Ptq(samples=samples, method=method)
    except ValidationError as err:
        if any(e["loc"] == ("method",) for e in err.errors()):
            raise ConfigError(
                f"unknown PTQ method {method!r}", hint="use --method ort (ONNX Runtime) or --method nncf (OpenVINO)"
            ) from None
        raise ConfigError(f"invalid PTQ option: {first_error(err)}", hint="see 'edgekit ptq --help'") from None
    return Plan(
        source="edgekit ptq",
        name=Path(out).resolve().name,
        model=model,
        data=Data(calibration=calibration),
        steps=Steps(ptq=ptq),
        output=Path(out),
        layout="onnx",
    )


def _static(name: str) -> bool:
    from edgekit.deploy import targets

    return bool(targets.TARGETS[name].static_shapes)


def usable_targets(*, must_run: bool = False) -> tuple[list[str], dict[str, str]]:
    """Targets that compile here (and, with ``must_run``, whose artifacts also run here), and why
    each other one does not: the quickstart evaluates and profiles what it builds, so a
    compile-only target such as a TensorRT plan is listed as skipped with the reason."""
    from edgekit.deploy import targets

    ok, skipped = [], {}
    for name, cls in targets.TARGETS.items():
        target = cls()
        try:
            target.check_available()
        except Exception as err:  # noqa: BLE001 - reported as skipped, with the reason
            skipped[name] = str(err)
            continue
        why = target.runs_here() if must_run else None
        if why is not None:
            skipped[name] = f"compiles here, runs elsewhere: {why}"
        else:
            ok.append(name)
    return ok, skipped
