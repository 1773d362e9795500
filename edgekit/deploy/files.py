"""Files written safely: atomic writes (temp file + rename), staging directories renamed into place
only when complete, and the cleaning of what killed processes left behind.

Staging directories are ``.partial-<name>-<pid>-<random>`` beside their destination, the
directory being replaced is ``.old-...``, report temp files are ``.tmp-...``; leftovers of
processes that no longer run are removed by the next staging into the same folder and by
:func:`clean` (``edgekit clean``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError

# ---- writing files -----------------------------------------------------------------------


def _mount_of(path: Path) -> tuple[str, Path]:
    """(device, mount point) of the file system holding ``path``."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    device = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == str(p):
                device = fields[0]  # the last entry for a mount point is the one in effect
    return device, p


def write_error(path: Path, err: OSError, needed_bytes: int | None = None) -> ConfigError:
    """One-line error for a failed write of ``path`` (disk full: device, mount point, space needed)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        device, mount = _mount_of(path)
        free = shutil.disk_usage(mount).free if mount.exists() else 0
        need = f", needs ~{max(1, -(-needed_bytes // 1_000_000))} MB" if needed_bytes else ""
        return ConfigError(
            f"{path}: no space left on {device} ({mount}){need}, {free // 1_000_000} MB free",
            hint="free space there, or write to another folder",
        )
    return ConfigError(f"{path}: cannot write ({err.strerror or err})", hint="choose a writable output folder")


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, then ``os.replace``.

    ``path`` has either its old content or all of ``data``; an OSError is a one-line ConfigError.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".tmp-{path.name}-{os.getpid()}-", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report gets normal permissions
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise write_error(path, err, len(data)) from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# ---- manifests ---------------------------------------------------------------------------


_LEFTOVER = re.compile(r"^\.(?:partial|old|tmp)-.*-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_LEGACY = re.compile(r"^\..+\.(?:partial|old)-[A-Za-z0-9_]+$")  # before the pid was in the name: removed once a day old
LEGACY_AGE_S = 24 * 3600


def _stale(entry: Path) -> bool:
    """A leftover of a process that no longer runs (or a legacy leftover over a day old)."""
    try:
        mtime = entry.lstat().st_mtime
    except OSError:
        return False
    if (m := _LEFTOVER.match(entry.name)) is not None:
        import psutil

        pid = int(m["pid"])
        if pid == os.getpid():
            return False
        try:
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False  # someone else's live process
        return started > mtime + 1  # the pid now belongs to a process started after the leftover was last written
    return _LEGACY.match(entry.name) is not None and time.time() - mtime > LEGACY_AGE_S


def _remove(entry: Path) -> bool:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()
    return not os.path.lexists(entry)


def clean_folder(folder: Path) -> list[Path]:
    """Remove the stale leftovers directly in ``folder``; returns what was removed."""
    try:
        entries = [e for e in Path(folder).iterdir() if e.name.startswith(".")]
    except OSError:
        return []
    return [e for e in entries if (_LEFTOVER.match(e.name) or _LEGACY.match(e.name)) and _stale(e) and _remove(e)]


def clean(root: str | Path) -> list[Path]:
    """Remove stale staging directories and temp files anywhere under ``root``; returns what was removed.

    Only leftovers of processes that no longer run on this machine are touched (the pid in
    their name), so it is safe while other edgekit commands are writing under ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory", hint="pass the folder holding your artifacts (e.g. dist)")
    removed = clean_folder(root)
    for folder, dirs, _ in os.walk(root):
        removed += clean_folder(Path(folder))
        dirs[:] = [d for d in dirs if os.path.isdir(os.path.join(folder, d))]
    return removed


@contextlib.contextmanager
def staging(out: str | Path, *, require: str | None = None) -> Iterator[Path]:
    """Yield a temp dir beside ``out``; on success it replaces ``out`` atomically.

    ``require``: a file the staged directory is complete only with (an artifact's manifest.json).

    On any error the temp dir is removed and ``out`` keeps what it had before. Leftovers of
    killed processes in the same folder are removed first.
    """
    out = Path(out).expanduser().resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_folder(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".partial-{out.name}-{os.getpid()}-", dir=out.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; an artifact gets normal permissions
    except OSError as err:
        raise ConfigError(f"{out}: cannot write the output directory ({err.strerror})", hint="choose a writable --out path") from err
    old = None
    try:
        yield tmp
        if require and not (tmp / require).exists():
            raise RuntimeError(f"step finished without writing {require} in {tmp}")
        if out.exists():
            old = out.with_name(f".old-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if full else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous artifact back
        if full:
            raise write_error(out, exc, written or None) from exc  # written so far: a lower bound of what is needed
        raise


@contextlib.contextmanager
def undone_on_failure(out: str | Path) -> Iterator[Path]:
    """Yield ``out``; on any error, remove what the block created in it (``out`` itself when it was not there).

    For a folder written in place (a calibration's output beside an earlier calibration.json, or inside the
    heads folder), where :func:`staging` would replace the whole folder: the entries the failed block added are
    removed, the ones that were there before are left. An entry that existed may have been rewritten by the block:
    each artifact inside is staged on its own, so it is then whole, old or new."""
    out = Path(out)
    existed = out.exists()
    before = set(out.iterdir()) if out.is_dir() else set()
    try:
        yield out
    except BaseException:
        if not existed:
            _remove(out)
        elif out.is_dir():
            for entry in set(out.iterdir()) - before:
                _remove(entry)
        raise
