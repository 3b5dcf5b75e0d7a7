import json
import os
import stat
import subprocess
import sys

import pandas as pd
import pytest

from foldwise.core.outputs import atomic_dir, atomic_file, remove_leftovers, write_csv, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("stage died")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


def test_atomic_file_and_writers(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "m.json") as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "m.json", {"accuracy": 0.9})
    assert json.loads((tmp_path / "m.json").read_text()) == {"accuracy": 0.9}
    write_csv(tmp_path / "h.csv", pd.DataFrame({"epoch": [1, 2]}))
    assert (tmp_path / "h.csv").read_text() == "epoch\n1\n2\n"


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                        (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    """A shared project's group reads what a stage wrote (tempfile alone would give 0600 / 0700)."""
    old = os.umask(umask)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        with atomic_file(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"weights")
        with atomic_dir(tmp_path / "figures") as tmp:
            (tmp / "plot.png").write_bytes(b"png")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "metrics.json") == mode(tmp_path / "model.pt") == file_mode
    assert mode(tmp_path / "figures") == dir_mode
    assert mode(tmp_path / "figures/plot.png") == file_mode


def test_leftovers_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    """What SIGKILL leaves mid-write: the temporary sibling stays (no handler runs); the next start
    of the stage removes it, and only temporaries of its own outputs."""
    script = ("import os, sys, signal\nfrom foldwise.core.outputs import atomic_dir, atomic_file\n"
              "with atomic_dir(sys.argv[1] + '/prepared') as tmp, atomic_file(sys.argv[1] + '/m[1].json') as f:\n"
              "    (tmp / 'x.png').write_bytes(b'x' * 1000)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)])
    assert done.returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and left[0].startswith(".m[1].json.tmp-") and left[1].startswith(".prepared.tmp-")
    (tmp_path / "prepared").mkdir()  # the last good output, and a user's look-alike names: kept
    (tmp_path / ".other.tmp-1").write_text("not ours")
    (tmp_path / "prepared.tmp-1").write_text("not a hidden temporary")
    removed = remove_leftovers(tmp_path / "prepared", tmp_path / "m[1].json", tmp_path / "absent/out.csv")
    assert sorted(p.name for p in removed) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1", "prepared", "prepared.tmp-1"]

