import os
import signal
import subprocess
import sys

from foldwise.core.dvc_queue import queue_workers, running_experiments


def test_queue_workers_are_the_queue_worker_processes_started_in_the_repo(tmp_path):
    repo, other = tmp_path / "repo", tmp_path / "other"
    repo.mkdir()
    other.mkdir()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    worker = subprocess.Popen([*sleep, "exp", "queue-worker", "dvc-exp-abc123-1@localhost"], cwd=repo)
    elsewhere = subprocess.Popen([*sleep, "exp", "queue-worker", "dvc-exp-def456-1@localhost"], cwd=other)
    plain = subprocess.Popen(sleep, cwd=repo)
    try:
        assert queue_workers(repo) == [worker.pid]
        assert queue_workers(other) == [elsewhere.pid]
    finally:
        for proc in (worker, elsewhere, plain):
            proc.kill()
            proc.wait()
    assert queue_workers(repo) == []


SPAWN_CHILD = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
               "'import time; time.sleep(60)', *sys.argv[1:2]]); print(child.pid, flush=True); time.sleep(60)")


def worker_with_experiment(repo, name: str, running: bool):
    """A stand-in for DVC's queue worker (by its command line), with an ``exec-run`` child (an experiment
    it runs) or an idle child; returns (worker, the child's pid)."""
    role = "exec-run" if running else "idle"
    worker = subprocess.Popen([sys.executable, "-c", SPAWN_CHILD, role, "exp", "queue-worker", name], cwd=repo,
                              stdout=subprocess.PIPE, text=True)
    return worker, int(worker.stdout.readline())


def test_running_experiments_counts_the_busy_workers_of_the_queue_that_runs_the_process(tmp_path):
    repo, other = tmp_path / "repo", tmp_path / "other"
    repo.mkdir()
    other.mkdir()
    started = [worker_with_experiment(repo, "dvc-exp-abc-1@localhost", running=True),
               worker_with_experiment(repo, "dvc-exp-abc-2@localhost", running=True),
               worker_with_experiment(repo, "dvc-exp-abc-3@localhost", running=False),
               worker_with_experiment(other, "dvc-exp-def-1@localhost", running=True)]
    try:
        (_, in_repo), _, (_, idle), (_, in_other) = started
        assert running_experiments(in_repo) == 2  # the third worker is idle
        assert running_experiments(idle) == 2
        assert running_experiments(in_other) == 1
        assert running_experiments() == 0  # pytest is in no queued experiment
    finally:
        for worker, child in started:
            os.kill(child, signal.SIGKILL)
            worker.kill()
            worker.wait()
