"""Artifacts on disk: a directory of files plus ``manifest.json``.

An artifact is written into a temporary sibling directory and renamed into place only
when complete, so an interrupted or failed step never leaves a directory that looks
finished. The manifest lists the sha256 of every file; loading checks them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit import __version__
from edgekit.errors import ArtifactError, ConfigError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


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
    pad_id: int
    max_length: int


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


class SegmentSpec(_Frozen):
    """One early-exit segment: layers (after_layer, up_to_layer] plus that exit's head."""

    model_file: str
    up_to_layer: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # this segment's packed low-bit weights (edgekit.deploy.packing), beside its model file
    packed: dict[str, Any] | None = None


class ExitSpec(_Frozen):
    """How a dynamic early-exit artifact runs: its segments and the exit policy."""

    layers: list[int]
    policy: str
    param: float
    segments: list[SegmentSpec]


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
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    static_shape: list[int] | None = None
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
        str(p.relative_to(root)): FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Record every file's hash and write ``manifest.json`` (the last file written)."""
    final = manifest.model_copy(update={"files": file_table(root)})
    (root / MANIFEST).write_text(final.model_dump_json(indent=2) + "\n")
    return final


def manifest_sha256(root: Path) -> str:
    return sha256_file(Path(root) / MANIFEST)


def read_manifest(root: str | Path, *, verify: bool = True) -> Manifest:
    """Read an artifact's manifest; with ``verify`` check every file's sha256."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact directory", hint="pass a directory written by 'edgekit export' or 'edgekit compile'")
    path = root / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{root}: no {MANIFEST}, so not a finished edgekit artifact", hint="re-run the export or compile that makes it")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(
            f"{path}: invalid manifest, not readable JSON ({err})", hint="re-run the export or compile that makes it"
        ) from err
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(x) for x in e["loc"]) or "(top level)"
        raise ArtifactError(f"{path}: invalid manifest: {field}: {e['msg']}", hint="re-run the export or compile that makes it") from err
    if verify:
        for name, entry in manifest.files.items():
            f = root / name
            if not f.exists():
                raise ArtifactError(f"{root}: {name} listed in the manifest is missing", hint="the artifact is incomplete; rebuild it")
            if f.stat().st_size != entry.bytes or sha256_file(f) != entry.sha256:
                raise ArtifactError(
                    f"{root}: {name} does not match its sha256 in the manifest", hint="the artifact was modified or corrupted; rebuild it"
                )
    return manifest


@contextlib.contextmanager
def staging(out: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside ``out``; on success it replaces ``out`` atomically.

    On any error the temp dir is removed and ``out`` keeps what it had before.
    """
    out = Path(out).expanduser().resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; an artifact gets normal permissions
    except OSError as err:
        raise ConfigError(f"{out}: cannot write the output directory ({err.strerror})", hint="choose a writable --out path") from err
    old = None
    try:
        yield tmp
        if not (tmp / MANIFEST).exists():
            raise RuntimeError(f"step finished without writing {MANIFEST} in {tmp}")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous artifact back
        raise


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer files an artifact needs at run time."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def write_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
