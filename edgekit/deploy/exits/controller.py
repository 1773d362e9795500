"""Deploy-side early-exit controller: runs the segment sessions and lets each row leave.

No torch: numpy, the exit policy (the same code calibration simulated) and one target
session per segment. Rows that exit are dropped from the next segment's batch, so a batch
never has to agree. Used by :class:`edgekit.deploy.runtime.Predictor` for early-exit artifacts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.deploy.artifact import Manifest
from edgekit.deploy.exits.policies import State, make

EXIT_LAYER = "exit_layer"


def segment_manifest(manifest: Manifest, i: int) -> Manifest:
    """Segment ``i`` as a plain artifact's manifest (its packed weights, if any, as ``settings.packed``)."""
    seg = manifest.exits.segments[i]
    settings = {k: v for k, v in manifest.settings.items() if k != "packed"} | ({"packed": seg.packed} if seg.packed else {})
    return manifest.model_copy(
        update={"model_file": seg.model_file, "inputs": seg.inputs, "outputs": seg.outputs, "exits": None, "settings": settings}
    )


class ExitController:
    """A Session over several segment sessions (``infer`` adds ``exit_layer`` per row)."""

    def __init__(self, target, artifact_dir: Path, manifest: Manifest, options=None) -> None:
        spec = manifest.exits
        self.layers = np.asarray(spec.layers)
        self.policy = make(spec.policy, spec.param, manifest.task)
        self.output_name = manifest.outputs[0].name
        self._sessions = [target.load(artifact_dir, segment_manifest(manifest, i), options) for i in range(len(spec.segments))]
        self.input_names = list(self._sessions[0].input_names)
        self.output_names = [self.output_name, EXIT_LAYER]
        self.histogram = np.zeros(len(spec.layers), dtype=np.int64)
        self.segment_calls = np.zeros(len(spec.layers), dtype=np.int64)

    def __enter__(self) -> ExitController:
        self._sessions = [s.__enter__() for s in self._sessions]
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self._sessions:
            s.__exit__(*exc)

    def run_segment(self, k: int, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._sessions[k].infer(feed)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = next(iter(feed.values())).shape[0]
        out: np.ndarray | None = None
        exit_at = np.full(n, len(self._sessions) - 1)
        running = np.arange(n)
        state = State()
        mask = feed["attention_mask"]
        x = feed
        for k in range(len(self._sessions)):
            res = self.run_segment(k, x)
            self.segment_calls[k] += 1
            if out is None:
                out = np.empty((n, res["output"].shape[-1]), dtype=res["output"].dtype)
            if k == len(self._sessions) - 1:
                out[running] = res["output"]
                break
            leave, state = self.policy.decide(res, state)
            out[running[leave]] = res["output"][leave]
            exit_at[running[leave]] = k
            keep = ~leave
            running, state, mask = running[keep], state.take(keep), mask[keep]
            if not running.size:
                break
            x = {"hidden_in": res["hidden"][keep], "attention_mask": mask}
        self.histogram += np.bincount(exit_at, minlength=len(self._sessions))
        return {self.output_name: out, EXIT_LAYER: self.layers[exit_at]}


def segment_latencies(controller: ExitController, feeds: list[dict[str, np.ndarray]], rounds: int = 3) -> list[float]:
    """Mean batch-1 latency (ms) of each segment, running every input through all segments."""
    import time

    totals = np.zeros(len(controller._sessions))
    count = 0
    for _ in range(rounds):
        for feed in feeds:
            x = feed
            for k in range(len(controller._sessions)):
                t = time.perf_counter()
                res = controller.run_segment(k, x)
                totals[k] += time.perf_counter() - t
                if "hidden" in res:
                    x = {"hidden_in": res["hidden"], "attention_mask": feed["attention_mask"]}
            count += 1
    return (totals / count * 1000).tolist()


def latency_check(controller: ExitController, feeds: list[dict[str, np.ndarray]]) -> dict:
    """Measured mean batch-1 latency vs the latency predicted from segment timings.

    Runs every input through the controller (timing each call), then every input through
    all segments (timing each segment); predicted = sum_k P(exit at k) * (segments 0..k).
    """
    import time

    for f in feeds[:3]:
        controller.infer(f)  # warm-up
    before = controller.histogram.copy()
    times = []
    for f in feeds:
        t = time.perf_counter()
        controller.infer(f)
        times.append(time.perf_counter() - t)
    hist = controller.histogram - before
    seg_ms = segment_latencies(controller, feeds, rounds=1)
    expected = float((hist / hist.sum()) @ np.cumsum(seg_ms))
    measured = float(np.mean(times) * 1000)
    return {
        "exit_histogram": {int(layer): int(n) for layer, n in zip(controller.layers, hist)},
        "mean_exit_layer": float((hist * controller.layers).sum() / hist.sum()),
        "measured_mean_latency_ms": measured,
        "expected_latency_ms": expected,
        "segment_latency_ms": seg_ms,
        "measured_over_expected": measured / expected if expected else None,
        "texts": len(feeds),
    }
