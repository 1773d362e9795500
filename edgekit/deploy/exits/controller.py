"""Deploy-side early-exit controller: runs the segment sessions and lets each row leave.

No torch: numpy, the exit policy (the same code calibration simulated) and one target
session per segment. Rows that exit are dropped from the next segment's batch, so a batch
never has to agree. A call that checks no exit (the length plan turns checks off for its
length, or the policy can never exit) runs the single graph the artifact ships instead: one
runtime call, no boundaries, no exit heads. Used by :class:`edgekit.deploy.runtime.Predictor`
for early-exit artifacts.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from edgekit.deploy.artifact import Manifest
from edgekit.deploy.exits.policies import State, make
from edgekit.errors import ArtifactError, ConfigError

EXIT_LAYER = "exit_layer"
SINGLE_GRAPH = "single_graph"  # key in settings.exits: {"model_file": ..., "packed": ...} of the shipped single graph
_PACKED_FILES = ("file", "bin")  # keys of a packing record (edgekit.deploy.packing) that name files


def _plain(manifest: Manifest, model_file: str, packed: dict | None, **update) -> Manifest:
    settings = {k: v for k, v in manifest.settings.items() if k != "packed"} | ({"packed": packed} if packed else {})
    return manifest.model_copy(update={"model_file": model_file, "exits": None, "settings": settings, **update})


def segment_manifest(manifest: Manifest, i: int) -> Manifest:
    """Segment ``i`` as a plain artifact's manifest (its packed weights, if any, as ``settings.packed``)."""
    seg = manifest.exits.segments[i]
    return _plain(manifest, seg.model_file, seg.packed, inputs=seg.inputs, outputs=seg.outputs)


def graph_manifest(manifest: Manifest) -> Manifest:
    """The one-graph exit model (``exits.graph``) as a plain artifact's manifest."""
    one = manifest.exits.graph
    return _plain(manifest, one.model_file, one.packed, inputs=one.inputs, outputs=one.outputs)


def single_graph_entry(model_file: str, packed: dict | None) -> dict:
    """``settings.exits.single_graph``: the model file and its packed weights' files named from the
    artifact's root (so the manifest's check of named files covers them)."""
    parent = PurePosixPath(model_file).parent
    rebased = {k: str(parent / v) if k in _PACKED_FILES else v for k, v in packed.items()} if packed else None
    return {"model_file": model_file, "packed": rebased}


def single_manifest(manifest: Manifest) -> Manifest | None:
    """The shipped single graph (the model without exits) as a plain artifact's manifest; None when
    the artifact has none (exported before it shipped one)."""
    single = (manifest.settings.get("exits") or {}).get(SINGLE_GRAPH)
    if not single:
        return None
    parent, packed = PurePosixPath(single["model_file"]).parent, single.get("packed")
    if packed:  # packed files are named from the model file's folder, as in a plain artifact
        packed = {k: str(PurePosixPath(v).relative_to(parent)) if k in _PACKED_FILES else v for k, v in packed.items()}
    return _plain(manifest, single["model_file"], packed)


def never_exits(policy, exits: int) -> bool:
    """Whether ``policy`` can let no row leave before the last of ``exits`` exits, whatever the outputs
    (its parameter: one value, or one per exit)."""
    values = list(policy.param) if isinstance(policy.param, (list, tuple)) else [policy.param]
    if policy.name == "entropy":
        return all(v <= 0 for v in values)
    if policy.name == "patience":  # the agreement count reaches at most exits - 2 at the last decision
        return all(v > exits - 2 for v in values)
    return exits < 2


class LengthPlan:
    """Which sequence lengths check exits at all (calibration's per-length choice).

    ``buckets``: ascending upper bounds of token lengths; ``check[i]``: whether a call whose
    sequence length falls in bucket ``i`` checks exits (a longer one uses the last bucket's
    choice). Where checking costs more than early exits save (short inputs), the segments
    run back to back without exit heads read or policies evaluated.
    """

    def __init__(self, buckets: list[int], check: list[bool]) -> None:
        if len(buckets) != len(check) or list(buckets) != sorted(buckets):
            raise ArtifactError("exit length plan: buckets and check differ in length or are not ascending", hint="recalibrate")
        self.buckets, self.check = list(buckets), [bool(c) for c in check]

    @classmethod
    def from_settings(cls, settings: dict | None) -> LengthPlan | None:
        plan = (settings or {}).get("length_plan")
        return cls(plan["buckets"], plan["check"]) if plan else None

    def checks(self, length: int) -> bool:
        i = int(np.searchsorted(self.buckets, length))
        return self.check[min(i, len(self.check) - 1)]

    def to_json(self) -> dict:
        return {"buckets": self.buckets, "check": self.check}


class ExitController:
    """A Session over the exit artifact's graphs (``infer`` adds ``exit_layer`` per row).

    The one graph (``exits.graph``) decides every exit inside one runtime call; an artifact that ships
    segments too (``--form both``) answers single inputs with the graph and batches with the segments.
    Between segments the hidden state stays a runtime value where the sessions allow it
    (``infer_linked``: ONNX Runtime I/O binding, OpenVINO tensors set on the next request):
    only the exit heads' small outputs come back to numpy, and only rows that stay are
    gathered (a copy) when some leave. ``length_plan`` (default: the manifest's
    ``settings.exits.length_plan``) turns exit checks off for the sequence lengths where
    calibration measured that they do not pay.
    """

    def __init__(self, target, artifact_dir: Path, manifest: Manifest, options=None, *, length_plan: LengthPlan | None = None) -> None:
        spec = manifest.exits
        self.layers = np.asarray(spec.layers)
        self.policy = make(spec.policy, spec.param, manifest.task)
        try:
            self.policy.check(len(spec.layers))
        except ConfigError as err:
            raise ArtifactError(f"{artifact_dir}: {err.message}", hint="re-export it with one threshold per exit before the last") from err
        self.output_name = manifest.outputs[0].name
        self._sessions = [target.load(artifact_dir, segment_manifest(manifest, i), options) for i in range(len(spec.segments))]
        # the one-graph form: exits decided inside the model (edgekit.build.exits.onegraph), one call
        self.graph = target.load(artifact_dir, graph_manifest(manifest), options) if spec.graph is not None else None
        one = single_manifest(manifest)
        self.single = target.load(artifact_dir, one, options) if one is not None else None
        self.input_names = list((self.graph or self._sessions[0]).input_names)
        # calibration's timing graph takes two more inputs; left out, it decides as the policy says
        self._graph_defaults = {"exit_at": np.array(-1, np.int64), "use_policy": np.array(True)} if "exit_at" in self.input_names else {}
        self.input_names = [n for n in self.input_names if n not in self._graph_defaults]
        self.output_names = [self.output_name, EXIT_LAYER]
        self.histogram = np.zeros(len(spec.layers), dtype=np.int64)
        self.segment_calls = np.zeros(len(spec.layers), dtype=np.int64)
        self.single_calls = 0  # calls the single graph answered (no exit checked)
        self.length_plan = length_plan or LengthPlan.from_settings(manifest.settings.get("exits"))
        self.never = never_exits(self.policy, len(spec.layers))
        self.linked = False

    def __enter__(self) -> ExitController:
        self._sessions = [s.__enter__() for s in self._sessions]
        self.graph = self.graph.__enter__() if self.graph is not None else None
        self.single = self.single.__enter__() if self.single is not None else None
        self.linked = all(hasattr(s, "infer_linked") and not getattr(s, "buckets", None) for s in self._sessions)
        return self

    def __exit__(self, *exc: object) -> None:
        for s in [*self._sessions, *(x for x in (self.graph, self.single) if x is not None)]:
            s.__exit__(*exc)

    @property
    def segments(self) -> int:
        """How many segment sessions the artifact runs (0: the one graph alone)."""
        return len(self._sessions)

    def run_segment(self, k: int, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._sessions[k].infer(feed)

    def _run(self, k: int, x: dict, fetch: bool) -> tuple[dict[str, np.ndarray], object]:
        """Segment ``k``: (its outputs as numpy, or {} when not ``fetch``; its hidden state, as a runtime value if linked)."""
        last = k == len(self._sessions) - 1
        if self.linked:
            return self._sessions[k].infer_linked(x, None if last else "hidden", fetch or last)
        res = self._sessions[k].infer(x)
        return res, res.get("hidden")

    def _keep(self, k: int, hidden, keep: np.ndarray) -> np.ndarray:
        return self._sessions[k].take_rows(hidden, keep) if self.linked else hidden[keep]

    def checks(self, feed: dict[str, np.ndarray]) -> bool:
        """Whether this call checks exits: the policy can let a row leave, and the length plan
        checks at this sequence length."""
        return not self.never and (self.length_plan is None or self.length_plan.checks(feed["attention_mask"].shape[1]))

    def infer(self, feed: dict[str, np.ndarray], *, check: bool | None = None) -> dict[str, np.ndarray]:
        """Per-row exits; ``check=False`` checks none: the single graph answers (or, in an artifact
        without one, every segment runs without exit checks). ``None``: :meth:`checks` decides."""
        n = next(iter(feed.values())).shape[0]
        last = len(self.layers) - 1
        check = self.checks(feed) if check is None else check
        if not check and self.single is not None:
            self.single_calls += 1
            self.histogram[last] += n
            return {self.output_name: self.single.infer(feed)[self.output_name], EXIT_LAYER: np.full(n, self.layers[last])}
        if self.graph is not None and (n == 1 or not self._sessions):  # with segments too, they take the batches
            res = self.graph.infer(feed | self._graph_defaults)
            layer = res[EXIT_LAYER].astype(np.int64)
            self.histogram += np.bincount(np.searchsorted(self.layers, layer), minlength=len(self.layers))
            return {self.output_name: res[self.output_name], EXIT_LAYER: layer}
        if n == 1:
            return self._infer_one(feed)
        exit_at = np.full(n, last)
        running = np.arange(n)
        state = State()
        mask = feed["attention_mask"]
        x = feed
        for k in range(len(self._sessions)):
            res, hidden = self._run(k, x, check)
            self.segment_calls[k] += 1
            if k == last:
                if len(running) == n:
                    out = res["output"]
                else:
                    out[running] = res["output"]
                break
            if check:
                if k == 0:
                    out = np.empty((n, res["output"].shape[-1]), dtype=res["output"].dtype)
                leave, state = self.policy.decide(res, state)
                if leave.any():
                    out[running[leave]] = res["output"][leave]
                    exit_at[running[leave]] = k
                    keep = ~leave
                    running, state, mask = running[keep], state.take(keep), mask[keep]
                    if not running.size:
                        break
                    hidden = self._keep(k, hidden, keep)
            x = {"hidden_in": hidden, "attention_mask": mask}
        self.histogram += np.bincount(exit_at, minlength=len(self._sessions))
        return {self.output_name: out, EXIT_LAYER: self.layers[exit_at]}

    def _infer_one(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`infer` for one row, exits checked: the same decisions without the bookkeeping of
        rows that leave a batch (at batch 1 that numpy work cost about 5 % of the single graph's
        latency on a lowered MiniLM-L6)."""
        last = len(self._sessions) - 1
        state = State()
        x = feed
        for k in range(last + 1):
            res, hidden = self._run(k, x, True)
            self.segment_calls[k] += 1
            if k == last:
                break
            leave, state = self.policy.decide(res, state)
            if leave[0]:
                break
            x = {"hidden_in": hidden, "attention_mask": feed["attention_mask"]}
        self.histogram[k] += 1
        return {self.output_name: res["output"], EXIT_LAYER: self.layers[k : k + 1]}

    def forced(self, feed: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
        """A timing graph's call with every row leaving at exit ``k`` (0-based), the policy's arithmetic run
        but not obeyed: what the one graph costs to that exit (calibration's latency per exit)."""
        if not self._graph_defaults:
            raise ArtifactError("only calibration's timing graph can force an exit", hint="export it with timing=True")
        return self.graph.infer(feed | {"exit_at": np.array(k, np.int64), "use_policy": np.array(False)})

    def timed_chain(self, feed: dict[str, np.ndarray], check: bool = True) -> list[float]:
        """Run every row through every segment (no row leaves) and return the time (s) from the
        start to the end of each segment, exit check included (``check``: heads read, policy run)."""
        import time

        if not self._sessions:
            raise ArtifactError(
                "this artifact decides its exits inside one graph: there are no segments to time one by one",
                hint="time whole calls (edgekit profile), or export with --form segments",
            )

        t0 = time.perf_counter()
        stamps = []
        state = State()
        x = feed
        for k in range(len(self._sessions)):
            res, hidden = self._run(k, x, check)
            if check and k < len(self._sessions) - 1:
                _, state = self.policy.decide(res, state)
            stamps.append(time.perf_counter() - t0)
            x = {"hidden_in": hidden, "attention_mask": feed["attention_mask"]}
        return stamps


def segment_latencies(controller: ExitController, feeds: list[dict[str, np.ndarray]], rounds: int = 3) -> list[float]:
    """Mean batch-1 latency (ms) of each segment, exit check included, running every input through all segments."""
    totals = np.zeros(len(controller._sessions))
    for _ in range(rounds):
        for feed in feeds:
            totals += np.diff(controller.timed_chain(feed), prepend=0.0)
    return (totals / (rounds * len(feeds)) * 1000).tolist()


def latency_check(controller: ExitController, feeds: list[dict[str, np.ndarray]]) -> dict:
    """Measured mean batch-1 latency, beside the single graph the artifact ships (the model without
    exits, the same inputs, calls interleaved) and, for segments, the latency predicted from segment
    timings: sum_k P(exit at k) * (segments 0..k). A one-graph artifact has no segments to time
    (``expected_latency_ms`` is None)."""
    import time

    for f in feeds[:3]:
        controller.infer(f)  # warm-up
        if controller.single is not None:
            controller.single.infer(f)
    before = controller.histogram.copy()
    times, single = [], []
    for i, f in enumerate(feeds):
        for run in ("exits", "single") if i % 2 == 0 else ("single", "exits"):
            if run == "single" and controller.single is None:
                continue
            t = time.perf_counter()
            controller.infer(f) if run == "exits" else controller.single.infer(f)
            (times if run == "exits" else single).append(time.perf_counter() - t)
    hist = controller.histogram - before
    measured = float(np.mean(times) * 1000)
    seg_ms = expected = None
    if controller.graph is None:  # batch 1 runs the segments: their timings predict it
        seg_ms = segment_latencies(controller, feeds, rounds=1)
        expected = float((hist / hist.sum()) @ np.cumsum(seg_ms))
    single_ms = float(np.mean(single) * 1000) if single else None
    return {
        "exit_histogram": {int(layer): int(n) for layer, n in zip(controller.layers, hist)},
        "mean_exit_layer": float((hist * controller.layers).sum() / hist.sum()),
        "measured_mean_latency_ms": measured,
        "single_graph_latency_ms": single_ms,
        "measured_over_single_graph": measured / single_ms if single_ms else None,
        "expected_latency_ms": expected,
        "segment_latency_ms": seg_ms,
        "measured_over_expected": measured / expected if expected else None,
        "texts": len(feeds),
    }
