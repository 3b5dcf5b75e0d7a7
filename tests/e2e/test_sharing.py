"""End to end: two clones of the project share their outputs through a real DVC remote, a local
folder and an SSH server (Debian's OpenSSH, started here on 127.0.0.1 with throwaway keys).

Clone A is the reproduced digits project (its run committed, as the default run is in the real repo);
clone B is a fresh ``git clone`` of what A pushed to a bare git repo: it has dvc.lock but no outputs.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import copy_project
from tests.e2e.test_pipeline import ROOT, ran_stages, run

SSHD = Path("/usr/sbin/sshd")
LR = "0.02"  # A's experiment (the digits reference runs 0.008)
TRAINED = ("crossval", "train", "evaluate")  # the stages it runs again


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 that accepts one throwaway user key: (port, key file, root
    of its files). Stopped after the module."""
    if not SSHD.is_file():
        pytest.fail("OpenSSH's server not found: `make test` installs Debian's openssh-server")
    home = tmp_path_factory.mktemp("sshd")
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)], check=True)
    shutil.copy(home / "user.pub", home / "authorized_keys")
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation folder
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(home / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "sshd did not start listening"
            time.sleep(0.05)
    yield port, home / "user", home
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=10)


def ssh_url(sshd, folder: Path) -> str:
    port, _, _ = sshd
    return f"ssh://{getpass.getuser()}@127.0.0.1:{port}{folder}"


def add_remote(repo: Path, url: str, keyfile: Path | None = None, name: str = "team") -> None:
    """The remote as a user sets it: name and url in config, the key in config.local (never in git)."""
    run(repo, "dvc", "remote", "add", "--local", "-d", "-f", name, url)
    if keyfile is not None:
        run(repo, "dvc", "remote", "modify", "--local", name, "keyfile", str(keyfile))


@pytest.fixture
def team(digits_reference, tmp_path):
    """Clone A (the reproduced digits project) with a bare git repo it pushes to: (A, hub, tmp)."""
    a = copy_project(digits_reference, tmp_path / "a")
    hub = tmp_path / "hub.git"
    run(tmp_path, "git", "clone", "-q", "--bare", str(a), str(hub))
    run(a, "git", "remote", "add", "origin", str(hub))
    return a, hub, tmp_path


def fresh_clone(hub: Path, to: Path) -> Path:
    run(to.parent, "git", "clone", "-q", str(hub), str(to))
    run(to, "git", "config", "user.name", "b")
    run(to, "git", "config", "user.email", "b@foldwise.invalid")
    return to


def foldwise(repo: Path, *args: str, ok: bool = True):
    return run(repo, "python", "-m", "foldwise", *args, ok=ok)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def file_outputs(repo: Path) -> dict[str, str]:
    """Every file output dvc.lock names, with its md5 (folders are checked by dvc status)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", []) if not o["md5"].endswith(".dir")}


def assert_restored_exactly(b: Path) -> None:
    """B holds every output with dvc.lock's md5, dvc has nothing to run and git sees no change."""
    for path, want in file_outputs(b).items():
        assert md5(b / path) == want, path
    assert ran_stages(run(b, "dvc", "repro").stdout) == set()
    assert run(b, "git", "status", "--porcelain").stdout == ""


@pytest.mark.parametrize("kind", ["folder", "ssh"])
def test_a_fresh_clone_restores_every_output_and_every_run_a_teammate_pushed(team, sshd, kind):
    a, hub, tmp = team
    store = tmp / "store"
    store.mkdir()
    url, key = (str(store), None) if kind == "folder" else (ssh_url(sshd, store), sshd[1])
    add_remote(a, url, key)
    if kind == "folder":  # A's experiments (over SSH the same code shares the committed run only: faster),
        # trained as far as evaluate, the last stage whose results `make compare` shows
        ran = ran_stages(run(a, "dvc", "exp", "run", "-n", "faster", "-S", f"lr={LR}", "evaluate").stdout)
        assert ran == set(TRAINED)
        run(a, "git", "checkout", "--", ".")  # back to the committed run (the experiments are kept by DVC)
        run(a, "dvc", "checkout", "-q")
    pushed = foldwise(a, "push", "--git-remote", "origin").stdout
    count = 1 if kind == "folder" else 0
    assert "pushed to remote 'team'" in pushed and f"experiments on git remote 'origin': {count}" in pushed, pushed

    b = fresh_clone(hub, tmp / "b")
    add_remote(b, url, key)
    report = foldwise(b, "pull").stdout
    assert "restored from remote 'team': " + ", ".join(
        s for s in ["download", "prepare", "normalize", "crossval", "train", "evaluate", "export", "plots",
                    "report"]) in report, report
    assert "to run here: nothing" in report, report
    assert_restored_exactly(b)
    if kind == "folder":
        # A's experiment, asked for again on B: every stage it trained comes from the shared run-cache
        again = run(b, "dvc", "exp", "run", "-S", f"lr={LR}", "evaluate").stdout
        assert ran_stages(again) == set(), again
        assert set(re.findall(r"Stage '(\w+)' is cached - skipping run", again)) == set(TRAINED), again
        # the team's experiment beside the committed run, in 120 columns (make compare)
        run(b, "dvc", "exp", "pull", "origin", "faster")
        table = compare(b).splitlines()
        assert all(len(line) <= 120 for line in table) and "…" not in "".join(table), "\n".join(table)
        header = table[1].split()
        assert header[:2] == ["Experiment", "chosen"] and {"test.accuracy", "ensemble.accuracy", "lr"} <= set(header)
        assert any("[faster]" in line for line in table)


def compare(repo: Path) -> str:
    """``make compare``'s table, as a 120-column terminal shows it."""
    makefile = (ROOT / "Makefile").read_text()
    drop = re.search(r"^COMPARE_DROP := (.*)$", makefile, re.M).group(1).replace("$$", "$")
    done = subprocess.run(["dvc", "exp", "show", "--no-pager", "--only-changed", "--drop", drop], cwd=repo,
                          env={**os.environ, "COLUMNS": "120", "DVC_NO_ANALYTICS": "1",
                               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_faults_are_one_line_naming_the_remote_and_lose_nothing(team, sshd, tmp_path):
    a, hub, tmp = team
    store = tmp / "store"
    store.mkdir()
    add_remote(a, str(store))
    foldwise(a, "push")
    b = fresh_clone(hub, tmp / "b")

    def workspace() -> dict[str, str]:
        return {str(p.relative_to(b)): md5(p) for p in b.rglob("*")
                if p.is_file() and not {".git", ".dvc"} & set(p.relative_to(b).parts)}

    before = workspace()
    # an SSH server that is not there
    nowhere = ssh_url((free_port(), None, None), store)
    add_remote(b, nowhere, sshd[1])
    down = foldwise(b, "pull", ok=False)
    assert down.returncode == 1
    assert f"cannot reach remote 'team' ({nowhere}): is the server up" in down.stdout, down.stdout + down.stderr
    assert workspace() == before

    # the right server, the wrong key
    add_remote(b, ssh_url(sshd, store), sshd[2] / "host")
    refused = foldwise(b, "pull", ok=False)
    assert refused.returncode == 1 and "remote 'team' (ssh://" in refused.stdout
    assert "refused the login" in refused.stdout and "keyfile" in refused.stdout, refused.stdout

    # an object deleted from the remote: everything else is restored, its stage (and what follows) runs here
    model = file_outputs(b)["models/model.pt"]
    (store / "files" / "md5" / model[:2] / model[2:]).unlink()
    add_remote(b, str(store))
    partial = foldwise(b, "pull").stdout
    assert "remote 'team' has no usable copy of models/model.pt" in partial, partial
    assert "to run here: train, evaluate" in partial, partial
    assert "train" in ran_stages(run(b, "dvc", "repro").stdout)  # the same machine: the same model again
    assert_restored_exactly(b)


def test_a_damaged_object_over_ssh_is_refused_and_its_stage_recomputed(team, sshd):
    a, hub, tmp = team
    store = tmp / "store"
    store.mkdir()
    add_remote(a, str(store))
    foldwise(a, "push")
    model = file_outputs(a)["models/model.pt"]
    obj = store / "files" / "md5" / model[:2] / model[2:]
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped: DVC's SSH download does not re-hash
    obj.write_bytes(bytes(data))

    b = fresh_clone(hub, tmp / "b")
    add_remote(b, ssh_url(sshd, store), sshd[1])
    report = foldwise(b, "pull").stdout
    assert "remote 'team' holds a damaged copy of models/model.pt" in report, report
    assert not (b / "models" / "model.pt").exists()
    assert not list((b / ".dvc" / "cache").rglob(model[2:]))


def test_an_interrupted_pull_or_push_completes_when_run_again(team, sshd):
    a, hub, tmp = team
    store = tmp / "store"
    store.mkdir()
    add_remote(a, ssh_url(sshd, store), sshd[1])
    foldwise(a, "push")
    # a push killed mid-file leaves the object truncated in place (SSH writes it where it belongs)
    model = file_outputs(a)["models/model.pt"]
    obj = store / "files" / "md5" / model[:2] / model[2:]
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:1000])
    again = foldwise(a, "push").stdout
    assert "re-sent 1 object(s) an interrupted push had left incomplete" in again, again
    assert md5(obj) == model

    b = fresh_clone(hub, tmp / "b")
    add_remote(b, ssh_url(sshd, store), sshd[1])
    env_run = subprocess.Popen([sys.executable, "-m", "foldwise", "pull"], cwd=b, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(b / "src"), "DVC_NO_ANALYTICS": "1",
                                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    deadline = time.monotonic() + 60
    cache = b / ".dvc" / "cache" / "files" / "md5"
    while env_run.poll() is None and time.monotonic() < deadline:  # kill it while objects are arriving
        if cache.is_dir() and sum(1 for _ in cache.rglob("*")) > 200:
            env_run.kill()
            break
        time.sleep(0.01)
    assert env_run.wait() == -signal.SIGKILL, f"the pull ended before it was interrupted: {env_run.stderr.read()}"
    report = foldwise(b, "pull").stdout
    assert "to run here: nothing" in report, report
    assert_restored_exactly(b)
