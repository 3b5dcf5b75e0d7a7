"""The sharing commands' own logic: which objects are damaged, and one line per failure that names the
remote and the fix. End to end with real remotes (a folder, an OpenSSH server): tests/e2e/test_sharing.py."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from foldwise.core import remote


def put_object(cache: Path, data: bytes, name: str | None = None) -> Path:
    md5 = name or hashlib.md5(data).hexdigest()
    path = cache / md5[:2] / md5[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_an_object_is_damaged_when_its_bytes_do_not_hash_to_its_name(tmp_path):
    good = put_object(tmp_path, b"weights")
    text = b'[{"relpath": "a.png"}]'
    listing = put_object(tmp_path, text, hashlib.md5(text).hexdigest() + ".dir")
    bad = put_object(tmp_path, b"weights, one byte flipped", hashlib.md5(b"weights!").hexdigest())
    assert remote.damaged_objects([str(good), str(listing), str(bad)]) == {bad.parent.name + bad.name: str(bad)}


URL = "ssh://alice@cache.example.com/srv/cache"


class Repo:
    """What ``explain`` reads of a DVC repo: its config."""

    config = {"remote": {"team": {"url": "ssh://alice@cache.example.com/srv/cache"}}, "core": {"remote": "team"}}


@pytest.mark.parametrize(("error", "says"), [
    (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 2299)"),
     "cannot reach remote 'team' (ssh://alice@cache.example.com/srv/cache): is the server up"),
    (OSError("[Errno -2] Name or service not known"), "cannot reach remote 'team'"),
    (type("PermissionDenied", (Exception,), {})("Permission denied for user alice"),
     "remote 'team' (ssh://alice@cache.example.com/srv/cache) refused the login: set your key or user with "
     "`dvc remote modify --local team keyfile PATH`"),
    (FileNotFoundError(2, "No such file or directory"), f"remote 'team' ({URL}) has no such folder"),
    (RuntimeError("disk quota exceeded"), f"remote 'team' ({URL}) failed: RuntimeError: disk quota"),
])
def test_each_failure_is_one_line_naming_the_remote_and_the_fix(error, says):
    wrapped = RuntimeError("unexpected error")
    wrapped.__cause__ = error  # DVC wraps the transport's error: the cause decides
    line = remote.explain(Repo(), "team", error if isinstance(error, RuntimeError) else wrapped)
    assert says in line and "\n" not in line, line
    assert "docs/sharing.md" in line


def test_an_unknown_remote_name_lists_the_configured_ones():
    with pytest.raises(remote.RemoteError, match=r"no DVC remote named 'tem' \(configured: team\); add one: "
                                                 r"dvc remote add tem URL"):
        remote.remote_name(Repo(), "tem")
    assert remote.remote_name(Repo()) == "team"
    assert remote.remote_name(type("Bare", (), {"config": {}})()) is None


def test_the_report_says_what_came_from_where_and_each_fault_once():
    report = remote.PullReport("team", restored=["download", "prepare"], to_run=["train", "evaluate"],
                               damaged=["models/model.pt"], missing=["models/model.onnx"])
    assert report.lines() == [
        "restored from remote 'team': download, prepare",
        "to run here: train, evaluate",
        "remote 'team' has no usable copy of models/model.onnx: made here instead (share it from the machine "
        "that has it: make push)",
        "remote 'team' holds a damaged copy of models/model.pt: removed here, its stage runs again (on the "
        "remote, delete that object and push a good copy: docs/sharing.md)",
    ]
    assert remote.PullReport("team").lines()[:2] == ["restored from remote 'team': nothing", "to run here: nothing"]


def test_without_a_remote_pull_says_so_and_push_says_how_to_add_one(tmp_path):
    from dvc.repo import Repo as DvcRepo

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    DvcRepo.init(str(tmp_path)).close()
    assert remote.pull(tmp_path) is None
    with pytest.raises(remote.RemoteError, match=r"no DVC remote is configured: add one with `dvc remote add -d"):
        remote.push(tmp_path)
