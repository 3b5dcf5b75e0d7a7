"""Resume state: its key (what a checkpoint may be resumed by) and which folders a run may touch."""

import os
import shutil
import time
from pathlib import Path

import pytest

import foldwise.training.resume as checkpoints
from foldwise.core.errors import UserError
from foldwise.core.params import UNTRACKED, Params
from foldwise.training.resume import CHECKPOINT_ENV, MARKER, Checkpoints, default_root, for_stage


@pytest.fixture(autouse=True)
def own_root(tmp_path, monkeypatch):
    """Keys are computed with ``for_stage``, which prunes its folder: never the developer's own."""
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "ckpt"))


def changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, 3]
    if isinstance(value, dict):
        return {**value, "other": {"lr": 0.5}}
    if value is None:
        return "x"
    raise TypeError(f"no other value for {value!r}")


def key(params, device="cpu", inputs=(), stage="crossval"):
    return for_stage(stage, params, device, inputs).dir.name


def test_the_key_changes_with_every_tracked_param_and_only_those():
    params = Params().to_dict()
    base = key(params)
    assert key(dict(params)) == base  # the same run, the same key
    for name, value in params.items():
        other = key({**params, name: changed(value)})
        if name in UNTRACKED:
            assert other == base, f"{name} changes speed, not results: it must keep the key"
        else:
            assert other != base, f"{name} changes results: a run with another {name} must not resume this one"
    assert UNTRACKED & set(params)  # the untracked branch ran
    assert key(params, device="cuda") != base
    assert for_stage("train", params, "cpu", []).dir.parent.name == "train"


def test_the_key_changes_with_any_byte_of_an_input_file(tmp_path):
    params = Params().to_dict()
    manifest, stats = tmp_path / "manifest.csv", tmp_path / "stats.json"
    manifest.write_bytes(b"path,label\ntrain/a.png,0\n")
    stats.write_text('{"mean": [0.3]}')
    base = key(params, inputs=[manifest, stats])
    assert key(params) != base
    stats.write_text('{"mean": [0.4]}')
    assert key(params, inputs=[manifest, stats]) != base
    stats.write_text('{"mean": [0.3]}')
    assert key(params, inputs=[manifest, stats]) == base


def test_the_key_changes_with_the_package_code(tmp_path, monkeypatch):
    """Fixed code can change results: a checkpoint of the old code must not be resumed."""
    package = tmp_path / "foldwise"
    shutil.copytree(checkpoints.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(checkpoints, "PACKAGE", package)
    params = Params().to_dict()
    base = key(params)
    engine = package / "training" / "engine.py"  # every subpackage's modules count
    engine.write_text(engine.read_text().replace("EVAL_BATCH = 1024", "EVAL_BATCH = 512"))
    edited = key(params)
    assert edited != base
    engine.rename(package / "data" / "engine.py")
    moved = key(params)
    assert moved not in (base, edited)  # the same code in another subpackage is other code
    (package / "data" / "engine.py").unlink()
    assert key(params) not in (base, edited, moved)  # a module removed is a change too


def test_a_run_resumes_only_its_own_key(tmp_path):
    """End to end through ``for_stage``: a run with another lr sees nothing of this run's state."""
    params = Params().to_dict()
    for_stage("crossval", params, "cpu", []).save("run000", {"done": True})
    assert for_stage("crossval", params, "cpu", []).load("run000") == {"done": True}
    assert for_stage("crossval", {**params, "lr": 0.5}, "cpu", []).load("run000") is None
    assert for_stage("crossval", {**params, "memory_budget_mb": 1}, "cpu", []).load("run000") == {"done": True}


def test_checkpoints_of_other_experiments_are_never_resumed_nor_touched(tmp_path):
    """Two queued experiments run side by side: neither may delete the other's resume state."""
    Checkpoints("crossval", "lr-a", tmp_path).save("run000", {"done": True})
    other = Checkpoints("crossval", "lr-b", tmp_path)
    assert other.load("run000") is None
    other.save("run000", {"done": False})
    other.clear()  # lr-b finished: only its own key goes
    assert Checkpoints("crossval", "lr-a", tmp_path).load("run000") == {"done": True}
    assert not (tmp_path / "crossval" / "lr-b").exists()


def test_two_runs_starting_together_both_save_when_the_other_made_the_stage_folder(tmp_path, monkeypatch):
    """Two queued experiments start side by side: the second one's existence check runs before the
    first one's mkdir of ``crossval/`` and its own mkdir then finds the folder there (as
    ``dvc queue start -j 2`` did). It uses that folder: no FileExistsError."""
    first = Checkpoints("crossval", "lr-a", tmp_path)
    first.save("run000", {"done": True})
    stage_dir = tmp_path / "crossval"
    real_is_dir = Path.is_dir
    monkeypatch.setattr(Path, "is_dir", lambda self: False if self == stage_dir else real_is_dir(self))
    second = Checkpoints("crossval", "lr-b", tmp_path)
    second.save("run000", {"done": False})
    monkeypatch.undo()
    assert second.load("run000") == {"done": False} and first.load("run000") == {"done": True}


def test_checkpoints_nobody_wrote_for_a_week_are_pruned(tmp_path):
    Checkpoints("crossval", "killed", tmp_path).save("run000", {"done": False})
    Checkpoints("crossval", "running", tmp_path).save("run000", {"done": False})
    Checkpoints("crossval", "paused", tmp_path).save("run000", {"done": False})
    for name, days in (("killed", 8), ("paused", 6)):
        then = time.time() - days * 86400
        for path in (tmp_path / "crossval" / name, tmp_path / "crossval" / name / "run000.pt"):
            os.utime(path, (then, then))
    Checkpoints("crossval", "new", tmp_path)
    assert sorted(p.name for p in (tmp_path / "crossval").iterdir()) == [MARKER, "paused", "running"]


def test_checkpoints_live_in_the_dvc_project_that_queued_the_run(tmp_path, monkeypatch):
    """DVC points DVC_ROOT at the parent repository in queued runs (temporary copies): a re-queued
    experiment finds its checkpoints there."""
    assert default_root({"DVC_ROOT": str(tmp_path)}) == tmp_path / ".foldwise" / "checkpoints"
    assert default_root({"DVC_ROOT": str(tmp_path), CHECKPOINT_ENV: "/elsewhere"}) == Path("/elsewhere")
    assert default_root({}) == Path(".foldwise") / "checkpoints"


def test_an_unreadable_checkpoint_is_a_warning_and_a_fresh_start(tmp_path, capsys):
    store = Checkpoints("crossval", "k", tmp_path)
    store.save("run000", {"done": True})
    (store.dir / "run000.pt").write_bytes(b"cut short")
    assert store.load("run000") is None and store.load("run001") is None
    assert f"ignoring unreadable checkpoint {store.dir / 'run000.pt'}" in capsys.readouterr().err


def test_a_finished_run_removes_the_default_folders_it_created_once_empty(tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / ".foldwise" / "plots").mkdir(parents=True)  # something else of ours stays
    store = Checkpoints("train", "k")
    store.save("final", {"epoch": 1})
    assert (tmp_path / ".foldwise" / "checkpoints" / "train" / "k" / "final.pt").is_file()
    store.clear()
    assert sorted(p.name for p in (tmp_path / ".foldwise").iterdir()) == ["plots"]


def test_a_folder_given_by_the_user_is_never_removed(tmp_path, monkeypatch):
    """Only the default folders are ours to remove once empty; a root passed in, or named by
    FOLDWISE_CHECKPOINTS, stays even when the run leaves it empty."""
    given = tmp_path / "given"
    store = Checkpoints("train", "k", given)
    store.save("final", {"epoch": 1})
    store.clear()
    assert given.is_dir() and not (given / "train").exists()
    named = tmp_path / "named"
    monkeypatch.setenv(CHECKPOINT_ENV, str(named))
    store = Checkpoints("train", "k")
    assert store.root == named
    store.save("final", {"epoch": 1})
    store.clear()
    assert named.is_dir() and not list(named.iterdir())


def test_pruning_is_by_the_day_and_skips_what_it_cannot_read(tmp_path):
    """A key is pruned once 7 days have passed since its newest write, not before; stray files in the
    stage folder (not keys) are left alone and do not stop the pruning."""
    stage = tmp_path / "crossval"
    now = time.time()
    for name, age in (("a_old", 7 * 86400 + 5), ("b_young", 7 * 86400 - 60), ("z_old", 7 * 86400 + 5)):
        Checkpoints("crossval", name, tmp_path).save("run000", {"done": False})
        for path in (stage / name, stage / name / "run000.pt"):
            os.utime(path, (now - age, now - age))
    for stray in ("0.txt", "m.txt", "y.txt"):
        (stage / stray).write_text("not a key")
    Checkpoints("crossval", "new", tmp_path)
    assert sorted(p.name for p in stage.iterdir()) == [MARKER, "0.txt", "b_young", "m.txt", "y.txt"]


class Code:  # anything but tensors and plain data could run code when unpickled
    pass


def test_checkpoints_load_on_the_cpu_and_refuse_pickled_code(tmp_path, capsys):
    import torch

    store = Checkpoints("train", "k", tmp_path)
    store.save("final", {"weights": torch.ones(2)})
    loaded = store.load("final")
    assert loaded["weights"].device.type == "cpu" and torch.equal(loaded["weights"], torch.ones(2))
    store.save("evil", {"object": Code()})
    assert store.load("evil") is None
    assert "ignoring unreadable checkpoint" in capsys.readouterr().err


def test_clearing_twice_or_before_any_save_is_harmless(tmp_path):
    store = Checkpoints("train", "k", tmp_path)
    store.clear()
    store.save("final", {"epoch": 1})
    store.clear()
    store.clear()
    assert not (tmp_path / "train").exists()


def test_the_key_does_not_depend_on_the_order_params_come_in_and_takes_any_value():
    from foldwise.training.resume import fingerprint

    params = Params().to_dict()
    assert key(dict(reversed(list(params.items())))) == key(params)
    assert len(key(params)) == 16
    assert fingerprint({"path": Path("data/raw")}) == fingerprint({"path": "data/raw"})  # str() of the rest


def test_a_checkpoint_folder_of_the_users_own_is_never_touched(tmp_path, monkeypatch):
    """FOLDWISE_CHECKPOINTS=/some/dir that already holds the user's train/ and crossval/ folders
    (old ones, and one named like a key): a run, a prune and a clear leave every file of theirs;
    what foldwise made there (marked) is gone once its run finishes."""
    some_dir = tmp_path / "some_dir"
    mine = {"train/notes.txt": "mine", "train/old/weights.bin": "mine", "crossval/k2/run000.pt": "mine"}
    for name, text in mine.items():
        (some_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (some_dir / name).write_text(text)
    old = time.time() - 30 * 86400
    for path in some_dir.rglob("*"):
        os.utime(path, (old, old))
    monkeypatch.setenv(CHECKPOINT_ENV, str(some_dir))
    for stage in ("train", "crossval"):
        store = Checkpoints(stage, "k")
        store.save("final", {"epoch": 1})
        assert store.load("final") == {"epoch": 1}
        store.clear()
        Checkpoints(stage, "other")  # prunes
    assert {str(p.relative_to(some_dir)): p.read_text() for p in some_dir.rglob("*") if p.is_file()} == mine
    assert not (some_dir / "train/k").exists()
    with pytest.raises(UserError, match="crossval/k2 exists and foldwise did not create it"):
        Checkpoints("crossval", "k2").save("run000", {"done": True})
    stale = Checkpoints("train", "stale")  # a marked key of ours, killed a month ago: pruned
    stale.save("final", {"epoch": 1})
    for path in (stale.dir, stale.dir / "final.pt"):
        os.utime(path, (old, old))
    Checkpoints("train", "new")
    assert not stale.dir.exists() and (some_dir / "train/old/weights.bin").is_file()


def test_clearing_in_a_users_folder_leaves_every_folder_foldwise_did_not_make(tmp_path):
    """In a folder the user gave (FOLDWISE_CHECKPOINTS), an unmarked key folder and an unmarked, empty
    stage folder are the user's: clear() deletes neither."""
    user = tmp_path / "user"
    (user / "crossval" / "k").mkdir(parents=True)
    (user / "crossval" / "k" / "mine.txt").write_text("keep")
    Checkpoints("crossval", "k", root=user).clear()
    assert (user / "crossval" / "k" / "mine.txt").read_text() == "keep"
    (user / "crossval" / "k" / "mine.txt").unlink()
    (user / "crossval" / "k").rmdir()
    Checkpoints("crossval", "k", root=user).clear()  # the stage folder: empty, unmarked
    assert (user / "crossval").is_dir()


def test_a_key_that_cannot_be_read_is_skipped_and_pruning_goes_on(tmp_path):
    """A key whose files vanish mid-stat (here: a dangling link) is skipped; every other stale key is
    still pruned, wherever the unreadable one comes in the folder's order. Each key says who made it."""
    stage = tmp_path / "crossval"
    old = time.time() - 8 * 86400
    names = [f"stale{i:02d}" for i in range(20)]
    for name in [*names, "vanishing"]:
        Checkpoints("crossval", name, tmp_path).save("run000", {"done": False})
        assert (stage / name / MARKER).read_text() == "made by foldwise: deleted once its run finishes\n"
    os.symlink(stage / "gone.pt", stage / "vanishing" / "run001.pt")
    for name in [*names, "vanishing"]:
        for path in (stage / name, stage / name / "run000.pt"):
            os.utime(path, (old, old))
    Checkpoints("crossval", "new", tmp_path)
    assert sorted(p.name for p in stage.iterdir()) == [MARKER, "vanishing"]
