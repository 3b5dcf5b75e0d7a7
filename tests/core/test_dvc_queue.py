import subprocess
import sys

from foldwise.core.dvc_queue import queue_workers


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
