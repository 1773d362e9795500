"""Profile on a remote device over SSH: copy the artifact, run ``edgekit profile`` there,
bring the JSON back.

Uses the system's ``ssh``/``scp`` with ``BatchMode=yes`` (keys, no password prompts), so
it works with whatever ``~/.ssh/config`` already says about the device. The remote side
needs edgekit's deploy install (``pip install edgekit`` plus the target runtime; no torch).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from edgekit.deploy.report import ProfileReport
from edgekit.errors import ConfigError, MissingDependency, TargetError

TIMEOUT_S = 3600


def check_host(host: str) -> str:
    """``host`` as ssh takes it (``[user@]name``); anything ssh could read as an option, or that
    could split or end a command line, is refused."""
    if not isinstance(host, str) or not host:
        raise ConfigError("empty --host", hint="pass the device's ssh name, e.g. --host jetson or --host user@10.0.0.5")
    bad = next((c for c in host if c.isspace() or not c.isprintable()), None)
    if host.startswith("-") or bad is not None or len(host) > 255:
        why = "starts with '-' (ssh would read it as an option)" if host.startswith("-") else "has whitespace or control characters"
        if bad is None and not host.startswith("-"):
            why = "is longer than 255 characters"
        raise ConfigError(
            f"invalid --host {host[:80]!r}: {why}", hint="pass the device's ssh name, e.g. --host jetson or --host user@10.0.0.5"
        )
    return host


def _options_to_args(options) -> list[str]:
    args = [
        "--seq-len",
        str(options.seq_len),
        "--seconds",
        str(options.seconds_per_point),
        "--min-runs",
        str(options.min_runs),
        "--max-runs",
        str(options.max_runs),
        "--warmup",
        str(options.warmup),
        "--cold-runs",
        str(options.cold_runs),
    ]
    if options.seq_lens:
        args += ["--seq-lens", ",".join(map(str, options.seq_lens))]
    if options.batches:
        args += ["--batches", ",".join(map(str, options.batches))]
    if options.threads:
        args += ["--threads", str(options.threads)]
    return args


class Remote:
    """ssh/scp to one host; every failure is a TargetError with ssh's own last line."""

    def __init__(self, host: str, port: int | None = None, connect_timeout: int = 10, ssh_options: list[str] | None = None) -> None:
        self.host = check_host(host)
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise MissingDependency(f"{tool} is not installed but is needed for --host", hint="install the OpenSSH client")
        common = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}", "-o", "StrictHostKeyChecking=accept-new"]
        for opt in ssh_options or []:  # e.g. "IdentityFile=~/.ssh/jetson", as ssh -o takes them
            common += ["-o", opt]
        # "--" ends the options in every call: nothing after it is read as one, whatever the host says
        self.ssh_base = ["ssh", *common, *(["-p", str(int(port))] if port else [])]
        self.scp_base = ["scp", "-q", "-r", *common, *(["-P", str(int(port))] if port else [])]

    def _run(self, cmd: list[str], what: str) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            raise TargetError(f"{self.host}: {what} timed out", hint="check the device is up and not overloaded") from err
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or [f"exit code {proc.returncode}"]
            raise TargetError(
                f"{self.host}: {what} failed: {lines[-1].strip()}",
                hint="check that 'ssh HOST' works without a password prompt and edgekit is installed there",
            )
        return proc.stdout

    def run(self, command: str, what: str) -> str:
        return self._run([*self.ssh_base, "--", self.host, command], what)

    def put(self, local: Path, remote: str) -> None:
        self._run([*self.scp_base, "--", str(local.resolve()), f"{self.host}:{remote}"], f"copying {local.name}")

    def get(self, remote: str, local: Path) -> None:
        self._run([*self.scp_base, "--", f"{self.host}:{remote}", str(local.resolve())], "fetching the report")


def remote_profile(
    artifact_dir: str | Path,
    host: str,
    options,
    *,
    port: int | None = None,
    edgekit: str = "edgekit",
    ssh_options: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ProfileReport:
    """Run ``edgekit profile`` for ``artifact_dir`` on ``host``; returns the report it wrote."""
    say = progress or (lambda msg: None)
    artifact_dir = Path(artifact_dir)
    from edgekit.deploy.artifact import read_manifest

    check_host(host)
    manifest = read_manifest(artifact_dir)  # refuse to ship a broken artifact
    remote = Remote(host, port, ssh_options=ssh_options)
    say(f"connecting to {host}")
    remote.run("true", "connecting")
    work = f"/tmp/edgekit-{uuid.uuid4().hex[:12]}"
    try:
        remote.run(f"mkdir -p {shlex.quote(work)}", "creating a work folder")
        say(f"copying {artifact_dir.name} to {host}")
        remote.put(artifact_dir, f"{work}/artifact")
        args = _options_to_args(options)
        if options.text_file:
            remote.put(Path(options.text_file), f"{work}/texts{Path(options.text_file).suffix}")
            args += ["--text-file", f"{work}/texts{Path(options.text_file).suffix}"]
        say(f"profiling on {host}")
        remote.run(
            " ".join(
                [
                    edgekit,
                    "profile",
                    shlex.quote(f"{work}/artifact"),
                    *map(shlex.quote, args),
                    "--out",
                    shlex.quote(f"{work}/reports"),
                    "--no-plots",
                ]
            ),
            "edgekit profile",
        )
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "report.json"
            remote.get(f"{work}/reports/{manifest.target}.profile.json", local)
            try:
                report = ProfileReport.model_validate(json.loads(local.read_text()))
            except (ValueError, ValidationError) as err:
                raise TargetError(
                    f"{host}: the remote report does not match this edgekit's schema ({str(err).splitlines()[0]})",
                    hint="install the same edgekit version on the device",
                ) from err
    finally:
        try:
            remote.run(f"rm -rf {shlex.quote(work)}", "cleaning up")
        except TargetError:
            pass
    notes = [*report.source.notes, f"measured on {host} over ssh; artifact copied from {artifact_dir}"]
    return report.model_copy(
        update={
            "source": report.source.model_copy(update={"notes": notes}),
            "artifact": report.artifact.model_copy(update={"path": str(artifact_dir)}),
        }
    )
