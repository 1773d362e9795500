"""Deploy side: open an artifact and run it on text, with its own runtime and no torch.

``profile`` and ``eval`` use only this module (plus numpy, tokenizers and the target's
runtime), so they run on a device that has no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.deploy import artifact, targets
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.targets.base import Session, TargetOptions
from edgekit.deploy.targets.ort import OrtCpuTarget
from edgekit.deploy.tokenizer import Tokenizer
from edgekit.errors import ArtifactError, ConfigError, TargetError


def target_for(manifest: Manifest, artifact_dir: str | Path = ".") -> targets.Target:
    """The target that runs an artifact (an exported ONNX artifact runs on ONNX Runtime); its model
    files must be of a kind the target runs (an unknown target is refused by the registry)."""
    target = OrtCpuTarget() if manifest.kind == "onnx" else targets.get(manifest.target)
    artifact.check_model_files(Path(artifact_dir), manifest, type(target).model_suffixes)
    return target


class Predictor:
    """An artifact ready to run: tokenizer + runtime session. Use as a context manager."""

    def __init__(self, artifact_dir: str | Path, *, options: TargetOptions | None = None, verify: bool = True) -> None:
        self.dir = Path(artifact_dir)
        self.manifest = artifact.read_manifest(self.dir, verify=verify)
        self.target = target_for(self.manifest, self.dir)
        if self.manifest.pending:
            raise TargetError(f"{self.dir}: not runnable yet: {self.manifest.pending}", hint="finish it on the device it was built for")
        self.target.check_available()
        if (why := self.target.executable_here(self.manifest)) is not None:
            raise TargetError(
                f"{self.dir}: {self.manifest.target} artifacts cannot run here: {why}", hint="run it on the device it was built for"
            )
        self.tokenizer = Tokenizer(self.dir, self.manifest)
        self.output = self.manifest.outputs[0].name
        self._options = options
        self.session: Session | None = None

    @property
    def static_batch(self) -> int | None:
        return self.manifest.static_shape[0] if self.manifest.static_shape else None

    def __enter__(self) -> Predictor:
        if self.manifest.exits is not None:
            from edgekit.deploy.exits.controller import ExitController

            self._check_runtime_version()
            self.session = ExitController(self.target, self.dir, self.manifest, self._options).__enter__()
        else:
            self.session = self.target.load(self.dir, self.manifest, self._options).__enter__()
        try:
            self._check_names()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _check_names(self) -> None:
        """The graph the runtime loaded must take the inputs and give the outputs the manifest names."""
        named_in, named_out = [t.name for t in self.manifest.inputs], [t.name for t in self.manifest.outputs]
        problems = [f"the manifest names output {n!r}" for n in named_out if n not in self.session.output_names]
        problems += [f"the manifest names input {n!r}" for n in named_in if n not in self.session.input_names]
        problems += [f"the model needs input {n!r} the manifest does not name" for n in self.session.input_names if n not in named_in]
        if problems:
            raise ArtifactError(
                f"{self.dir}: {problems[0]}; the loaded model takes {', '.join(map(repr, self.session.input_names))} "
                f"and gives {', '.join(map(repr, self.session.output_names))}",
                hint="the manifest does not describe this model file; recompile the artifact",
            )

    @property
    def exits(self):
        """The early-exit controller (histogram of exit layers), or None."""
        from edgekit.deploy.exits.controller import ExitController

        return self.session if isinstance(self.session, ExitController) else None

    def _check_runtime_version(self) -> None:
        """Early-exit artifacts run several graphs whose exit decisions were checked with
        one runtime version; another version is refused rather than trusted."""
        from edgekit.deps import version_of

        for module, built in self.manifest.runtime.items():
            if module not in ("onnxruntime", "openvino"):
                continue
            here = version_of(module)
            if here is not None and here.split("-")[0] != built.split("-")[0]:
                raise TargetError(
                    f"{self.dir}: early-exit artifact built with {module} {built}, this machine has {here}",
                    hint=f"recompile it here (edgekit exits compile), or install {module}=={built.split('-')[0]}",
                )

    def __exit__(self, *exc: object) -> None:
        if self.session is not None:
            self.session.__exit__(*exc)
            self.session = None

    def check_batch(self, batch: int) -> None:
        if self.static_batch is not None and batch != self.static_batch:
            raise ConfigError(
                f"{self.dir}: built for the static shape {self.manifest.static_shape}, cannot run batch {batch}",
                hint=f"use batch {self.static_batch}, or export with dynamic shapes",
            )

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Model only: one call on an already tokenized batch."""
        return self.session.infer(feed)[self.output]

    def predict(self, texts: list[str], *, batch: int = 16, exits: bool = True) -> np.ndarray:
        """Outputs (logits or embeddings) for every text, in batches; static batches padded. ``exits=False`` on an
        early-exit artifact: through the single graph it ships (the model without exits)."""
        batch = self.static_batch or batch
        run = self.run
        if not exits and self.exits is not None:
            single, name = self.exits.single, self.exits.output_name
            run = lambda feed: single.infer(feed)[name]  # noqa: E731
        parts = []
        for i in range(0, len(texts), batch):
            chunk = texts[i : i + batch]
            padded = chunk + [chunk[-1]] * (batch - len(chunk)) if self.static_batch else chunk
            parts.append(run(self.tokenizer(padded))[: len(chunk)])
        return np.concatenate(parts, axis=0)
