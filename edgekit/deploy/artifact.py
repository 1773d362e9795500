"""Artifacts on disk: a directory of files plus ``manifest.json`` and ``manifest.sha256``.

What is guaranteed:

- An artifact is written into a staging directory beside its destination,
  ``.partial-<name>-<pid>-<random>``, and renamed into place only when complete, so an
  interrupted or failed step never leaves a directory that looks finished. Staging
  directories (and ``.old-*`` / ``.tmp-*`` leftovers) of processes that no longer run are
  removed by the next staging into the same folder, and by :func:`clean`.
- ``manifest.json`` lists the sha256 of every file; ``manifest.sha256`` (``sha256sum``
  format) holds the manifest's own hash. :func:`read_manifest` refuses a manifest that
  does not match it, a manifest without it (written before it existed: recompile), a
  model file or any other file the manifest names that is not among the hashed files, a
  model file of another kind than its target runs, and (``verify``) any file that
  differs from its hash.
- Reports and manifests are written by :func:`write_text` / :func:`write_json`: a temp file
  in the same folder, renamed over the destination, so a reader never sees half a file;
  a failure is one line (disk full names the device, its mount point and the space needed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit import __version__
from edgekit.deploy import files

# re-exported: artifact.write_json / write_text / clean are what the steps and commands call
from edgekit.deploy.files import clean as clean
from edgekit.deploy.files import clean_folder as clean_folder
from edgekit.deploy.files import write_bytes as write_bytes
from edgekit.deploy.files import write_error as write_error
from edgekit.deploy.files import write_json as write_json
from edgekit.deploy.files import write_text as write_text
from edgekit.errors import ArtifactError

MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest.sha256"
SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 64 << 20
RECOMPILE = "recompile it (edgekit export / compile) with this edgekit"

# Strings in a manifest's settings that name one of the artifact's files.
_FILE_SUFFIXES = (".onnx", ".ort", ".xml", ".bin", ".blob", ".lowbit", ".npz", ".so")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    name: str
    shape: list[int | str]
    dtype: str


class Source(_Frozen):
    """The trained checkpoint an artifact was made from."""

    path: str
    sha256: str
    model_type: str
    task: Literal["classifier", "embedding"]
    pooling: str | None = None
    normalize: bool = False
    labels: list[str] | None = None
    max_length: int


class TokenizerInfo(_Frozen):
    pad_token: str
    pad_id: int = Field(ge=0, lt=1 << 31)
    max_length: int = Field(ge=1, le=1 << 20)


class FileEntry(_Frozen):
    sha256: str
    bytes: int


class ParityReport(_Frozen):
    """Runtime outputs vs PyTorch's on the same real tokenized text."""

    reference: str = "torch"
    runtime: str
    output: str
    texts: int
    max_abs_diff: float
    atol: float
    argmax_agreement: float | None = None
    min_cosine: float | None = None
    min_required: float
    passed: bool
    rows_over_atol: int | None = None  # texts whose largest difference exceeds atol, where the tolerance allows some


class SegmentSpec(_Frozen):
    """One early-exit segment: layers (after_layer, up_to_layer] plus that exit's head."""

    model_file: str
    up_to_layer: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # this segment's packed low-bit weights (edgekit.deploy.packing), beside its model file
    packed: dict[str, Any] | None = None


class ExitSpec(_Frozen):
    """How a dynamic early-exit artifact runs: its segments, or its one graph, and the exit policy."""

    layers: list[int]
    policy: str
    param: float | list[float]  # one value for every exit, or one per exit before the last
    segments: list[SegmentSpec]  # empty when ``graph`` runs the exits
    # the one-graph form (edgekit.build.exits.onegraph): every layer, head and decision in one model with
    # If nodes; outputs the model's output and ``exit_layer``
    graph: SegmentSpec | None = None

    @property
    def parts(self) -> list[SegmentSpec]:
        """The model files that run the exits: the one graph, or the segments."""
        return [self.graph] if self.graph is not None else list(self.segments)


class Manifest(_Frozen):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["onnx", "compiled"]
    target: str
    name: str
    created: str
    edgekit_version: str = __version__
    source: Source
    tokenizer: TokenizerInfo
    model_file: str
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    static_shape: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=2, max_length=2)  # [batch, sequence]
    precision: str = "fp32"
    opset: int
    runtime: dict[str, str]
    settings: dict[str, Any] = {}
    parity: ParityReport | None = None
    parent: str | None = None  # sha256 of the manifest this artifact was compiled from
    # What is still to be done on the device before this artifact runs (e.g. a TensorRT
    # engine to build there). None: the artifact is complete.
    pending: str | None = None
    exits: ExitSpec | None = None  # set for dynamic early-exit artifacts (one graph per segment)
    files: dict[str, FileEntry] = {}

    @property
    def task(self) -> str:
        return self.source.task


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def file_table(root: Path) -> dict[str, FileEntry]:
    return {
        p.relative_to(root).as_posix(): FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in (MANIFEST, MANIFEST_SHA256)
    }


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Record every file's hash and write ``manifest.json`` and its ``manifest.sha256`` (the last files written)."""
    final = manifest.model_copy(update={"files": file_table(root)})
    raw = (final.model_dump_json(indent=2) + "\n").encode()
    write_bytes(root / MANIFEST, raw)
    write_text(root / MANIFEST_SHA256, f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n")  # `sha256sum -c` checks it too
    return final


def manifest_sha256(root: Path) -> str:
    return sha256_file(Path(root) / MANIFEST)


def _referenced_files(manifest: Manifest) -> list[str]:
    """Every file of the artifact that the manifest names: model files, packed weights, files in settings."""
    # packed low-bit weights lie beside the model file they belong to
    names = [manifest.model_file]
    packs = [(manifest.model_file, manifest.settings.get("packed"))]
    if manifest.exits is not None:
        names += [s.model_file for s in manifest.exits.parts]
        packs += [(s.model_file, s.packed) for s in manifest.exits.parts]
    for model, p in packs:
        if isinstance(p, dict) and isinstance(p.get("file"), str):
            names.append(str(PurePosixPath(model).parent / p["file"]))

    def scan(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            if value.endswith(_FILE_SUFFIXES) and not os.path.isabs(value) and "\n" not in value and " " not in value:
                yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from scan(v)
        elif isinstance(value, list):
            for v in value:
                yield from scan(v)

    models = list(names)
    names += list(scan(manifest.settings))
    if manifest.target == "openvino-cpu":  # its IR reads the weights beside the .xml (the NPU's settings name its own)
        names += [str(PurePosixPath(n).with_suffix(".bin")) for n in models if n.endswith(".xml")]
    return list(dict.fromkeys(names))


def check_manifest(root: Path, manifest: Manifest) -> None:
    """What a manifest says must hold together: safe file names, every named file hashed, kind and
    target consistent (the model files' kind is checked by the runtime against the target's
    ``model_suffixes``: :func:`check_model_files`)."""
    for name in manifest.files:
        parts = PurePosixPath(name).parts
        if not name or name.startswith("/") or ".." in parts or "\\" in name or name in (MANIFEST, MANIFEST_SHA256):
            raise ArtifactError(f"{root}: the manifest lists a file outside the artifact: {name!r}", hint=RECOMPILE)
    for name in _referenced_files(manifest):
        if name not in manifest.files:
            raise ArtifactError(f"{root}: {name} is named by the manifest but is not among its hashed files", hint=RECOMPILE)
    if manifest.kind == "onnx" and manifest.target != "onnx" or manifest.kind == "compiled" and manifest.target == "onnx":
        raise ArtifactError(f"{root}: a {manifest.kind} artifact cannot have the target {manifest.target!r}", hint=RECOMPILE)


def check_model_files(root: Path, manifest: Manifest, suffixes: tuple[str, ...]) -> None:
    """Every model file of the artifact (segments too) is of a kind its target runs (``suffixes``,
    the target's own ``model_suffixes``; only the first once nothing is pending on the device)."""
    expected = suffixes if manifest.pending else suffixes[:1]
    models = [manifest.model_file, *(s.model_file for s in (manifest.exits.parts if manifest.exits else []))]
    for name in models:
        if not name.endswith(expected):
            raise ArtifactError(
                f"{root}: model file {name} is not what target {manifest.target} runs (a {' or '.join(expected)} file)", hint=RECOMPILE
            )


def _read_checked(root: Path) -> bytes:
    """``manifest.json``'s bytes, checked against ``manifest.sha256``."""
    path, side = root / MANIFEST, root / MANIFEST_SHA256
    if not side.exists():
        raise ArtifactError(
            f"{root}: no {MANIFEST_SHA256}: written by an edgekit older than {__version__}, or the manifest was replaced",
            hint=f"{RECOMPILE}; manifests without their hash are refused",
        )
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(
                f"{path}: invalid manifest, {path.stat().st_size} bytes (over {MAX_MANIFEST_BYTES >> 20} MB)", hint=RECOMPILE
            )
        raw = path.read_bytes()
        recorded = side.read_text(encoding="ascii", errors="replace")[:200].split()
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read the manifest ({err.strerror or err})", hint="check the files' permissions") from err
    if not recorded or hashlib.sha256(raw).hexdigest() != recorded[0].lower():
        raise ArtifactError(
            f"{root}: {MANIFEST} does not match {MANIFEST_SHA256}: edited or corrupted after the artifact was written",
            hint=f"{RECOMPILE}; edited manifests are refused",
        )
    return raw


def read_manifest(root: str | Path, *, verify: bool = True) -> Manifest:
    """Read an artifact's manifest: its own hash, what it names, and (``verify``) every file's sha256."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact directory", hint="pass a directory written by 'edgekit export' or 'edgekit compile'")
    path = root / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{root}: no {MANIFEST}, so not a finished edgekit artifact", hint="re-run the export or compile that makes it")
    raw = _read_checked(root)
    try:
        manifest = Manifest.model_validate(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ArtifactError(
            f"{path}: invalid manifest, not readable JSON ({str(err)[:200]})", hint="re-run the export or compile that makes it"
        ) from err
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(x) for x in e["loc"])[:200] or "(top level)"
        raise ArtifactError(f"{path}: invalid manifest: {field}: {e['msg']}", hint="re-run the export or compile that makes it") from err
    check_manifest(root, manifest)
    if verify:
        for name, entry in manifest.files.items():
            f = root / name
            if not f.is_file():
                raise ArtifactError(f"{root}: {name} listed in the manifest is missing", hint="the artifact is incomplete; rebuild it")
            if f.stat().st_size != entry.bytes or sha256_file(f) != entry.sha256:
                raise ArtifactError(
                    f"{root}: {name} does not match its sha256 in the manifest", hint="the artifact was modified or corrupted; rebuild it"
                )
    return manifest


# ---- staging and cleaning ----------------------------------------------------------------


# .partial-<name>-<pid>-<random> (staging), .old-<name>-<pid>-<random> (the artifact being
# replaced), .tmp-<name>-<pid>-<random> (a file being written); <random> has no '-'.
def staging(out: str | Path, *, manifest: bool = True) -> contextlib.AbstractContextManager[Path]:
    """:func:`edgekit.deploy.files.staging` of an artifact: complete only with its manifest.json
    (``manifest=False`` for a folder that is not an artifact, such as a quantized checkpoint)."""
    return files.staging(out, require=MANIFEST if manifest else None)


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer files an artifact needs at run time."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
