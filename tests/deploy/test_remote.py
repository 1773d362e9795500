"""Profiling over SSH against a real sshd on loopback (started by the test), plus its errors.

The sshd test needs openssh-server (.ci/run installs it); without it that test is skipped
and remote profiling stays unverified on that machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact
from edgekit.deploy.profile import ProfileOptions
from edgekit.deploy.remote import remote_profile
from edgekit.errors import TargetError

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
OPTS = ProfileOptions(warmup=0, min_runs=3, max_runs=3, seconds_per_point=0.01, seq_len=8, batches=[1], cold_runs=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if SSHD is None or os.geteuid() != 0:
        pytest.skip("openssh-server not installed (or not root): remote profiling not verified here")
    d = tmp_path_factory.mktemp("sshd")
    key, host_key = d / "id_ed25519", d / "host_ed25519"
    for k in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nStrictModes no\nUsePAM no\n"
        f"Subsystem sftp /usr/lib/openssh/sftp-server\n"
        f"SetEnv PATH={Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip(f"sshd did not start: {proc.stderr.read().decode()[-300:]}")
    opts = [f"IdentityFile={key}", f"UserKnownHostsFile={d / 'known_hosts'}"]
    yield {"port": port, "options": opts}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ort_artifact(exported, tmp_path_factory):
    src = exported("bert-embedding")
    out = tmp_path_factory.mktemp("remote") / "ort-cpu"
    compile_artifact(src, artifact.read_manifest(src), "ort-cpu", out)
    return out


def test_profile_over_ssh_on_loopback(sshd, ort_artifact):
    edgekit = str(Path(sys.executable).parent / "edgekit")
    r = remote_profile(ort_artifact, "root@127.0.0.1", OPTS, port=sshd["port"], edgekit=edgekit, ssh_options=sshd["options"])
    assert r.artifact.target == "ort-cpu" and r.artifact.path == str(ort_artifact)
    assert r.artifact.manifest_sha256 == artifact.manifest_sha256(ort_artifact)  # the same artifact ran there
    assert r.first_token.model_only.n == 3 and r.first_token.seq_len == 8
    assert any("over ssh" in n for n in r.source.notes)


def test_unreachable_host_is_one_clear_error(ort_artifact):
    port = _free_port()  # nothing listens there
    with pytest.raises(TargetError, match=r"127\.0\.0\.1: connecting failed"):
        remote_profile(ort_artifact, "nobody@127.0.0.1", OPTS, port=port, ssh_options=["ConnectTimeout=3"])


def test_remote_without_edgekit_says_so(sshd, ort_artifact):
    with pytest.raises(TargetError, match="edgekit profile failed"):
        remote_profile(ort_artifact, "root@127.0.0.1", OPTS, port=sshd["port"], edgekit="/nonexistent/edgekit", ssh_options=sshd["options"])


def test_every_ssh_and_scp_call_ends_options_before_the_host(monkeypatch, tmp_path):
    import edgekit.deploy.remote as remote_mod

    calls: list[list[str]] = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(remote_mod.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(remote_mod.subprocess, "run", run)
    r = remote_mod.Remote("user@device", port=2222, ssh_options=["IdentityFile=/k"])
    r.run("true", "connecting")
    r.put(tmp_path, "/tmp/x")
    r.get("/tmp/x/report.json", tmp_path / "r.json")
    for cmd in calls:
        host_arg = next(i for i, a in enumerate(cmd) if a.startswith("user@device"))
        assert "--" in cmd and cmd.index("--") < host_arg, cmd


@pytest.mark.parametrize("host", ["-oProxyCommand=id", "a b", "a\tb", "a\nb", "", "x" * 300])
def test_hosts_that_ssh_could_misread_are_refused(host):
    from edgekit.deploy.remote import Remote
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="host"):
        Remote(host)
