"""Shared set-up of the end-to-end tests: one digits project, reproduced once per session.

Building a project (copying the tracked files, `git init`, `dvc repro` of every stage) costs
about 35 s on 2 cores, mostly Python start-up in eight stage processes; every test that starts from
a reproduced digits project takes a copy of this one instead (``digits_copy``), in well under a second.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from tests.e2e.test_pipeline import ALL_STAGES, make_clone, ran_stages, run, set_params

# small enough for seconds per stage, big enough that every stage has something to do
DIGITS = {"dataset": "digits", "valid_size": "0.15", "batch_size": "64", "epochs": "2", "k_folds": "2"}


@pytest.fixture(scope="session")
def digits_reference(tmp_path_factory) -> Path:
    """A fresh clone on digits (``DIGITS``) whose reference run is committed with its dvc.lock, as the
    default run is in the real repo. Never changed by a test: take a ``digits_copy``. Under
    pytest-xdist the workers share one, built by the first that needs it (the others wait)."""
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.getbasetemp()
    repo = root / "digits-reference"
    with FileLock(str(root / "digits-reference.lock")):
        if not (root / "digits-reference.done").is_file():
            shutil.rmtree(repo, ignore_errors=True)
            repo.mkdir()
            make_clone(repo)
            set_params(repo / "params.yaml", DIGITS)
            assert ran_stages(run(repo, "dvc", "repro").stdout) == ALL_STAGES
            run(repo, "git", "add", "-A")
            run(repo, "git", "commit", "-qm", "reference run on digits")
            (root / "digits-reference.done").touch()
    return repo


def copy_project(reference: Path, to: Path) -> Path:
    """``reference`` with its git history, DVC cache and workspace, copied to ``to``."""
    shutil.copytree(reference, to, symlinks=True, dirs_exist_ok=True)
    return to


@pytest.fixture
def digits_copy(digits_reference, tmp_path) -> Path:
    """A private copy of the reproduced digits project, for one test."""
    return copy_project(digits_reference, tmp_path / "project")
