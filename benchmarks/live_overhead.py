"""What the live view costs training: the monitor off, pointed at no server, at a hanging one, at a real one.

    .venv/bin/python benchmarks/live_overhead.py [--prepared data/prepared] [--images 20000] [--epochs 1]
                                                 [--rounds 30] [--every 0.25]

Trains the default model and params (LeNet, batch 256, one-cycle Adam) on
``--images`` of the prepared train split, preloaded as the pipeline does,
once per configuration per round, the configurations interleaved and their
order rotated each round, so drift in machine speed and warm-up effects hit
all alike. Short runs in many rounds, compared within each round, because
this VM's speed drifts by 10-15% over minutes. The live monitor sends a
per-step point every ``--every`` seconds (default 0.25: four times the
default rate, to be pessimistic):

- off:     ``ConsoleMonitor`` only (what ``FOLDWISE_VISDOM`` unset gives)
- absent:  the live monitor pointed at a loopback port nobody listens on
- hanging: pointed at a socket that accepts connections and never answers
- live:    pointed at a real ``foldwise-visdom`` server (started here)

Reports the median training seconds (``fit`` only), the median over rounds
of each configuration's time divided by off's in the same round, the same
for the CPU seconds of this process (all threads: training plus the
monitor's thread), the seconds ``close()`` then waited at the end of the
stage, and how many warning lines each printed; then the cost of one
``on_step`` call, the only work the monitor adds to the training thread per
batch. Per-step points use the default (one a second).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hanging_server() -> str:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(256)
    held = []

    def accept_forever() -> None:
        while True:
            held.append(server.accept()[0])  # keep the connection open, never answer

    threading.Thread(target=accept_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}"


def live_server(folder: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "foldwise-visdom"), "--port", str(port)],
                               cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            return url, process
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("foldwise-visdom did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", default=str(ROOT / "data/prepared"))
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--every", type=float, default=0.25, help="seconds between per-step points")
    args = parser.parse_args()

    from foldwise.core.params import load_params
    from foldwise.data.batches import open_split
    from foldwise.live.visdom_monitor import VisdomMonitor
    from foldwise.training.callbacks import ConsoleMonitor, Monitors
    from foldwise.training.engine import fit, seed_everything
    from foldwise.training.models import build_model

    p = dataclasses.replace(load_params(ROOT / "params.yaml"), epochs=args.epochs)
    stats = json.loads((Path(args.prepared).parent / "stats.json").read_text())
    data = open_split(args.prepared, "train", stats, torch.device("cpu"), p.memory_budget_mb)
    train = data.subset(np.arange(args.images))
    valid = data.subset(np.arange(args.images, min(len(data), args.images + 10_000)))
    tmp = Path(tempfile.mkdtemp())
    live_url, process = live_server(tmp)
    urls = {"absent": f"http://127.0.0.1:{free_port()}", "hanging": hanging_server(), "live": live_url}
    results: dict[str, dict[str, list[float]]] = {k: {"fit": [], "cpu": [], "close": [], "warnings": []}
                                                  for k in ("off", "absent", "hanging", "live")}
    with contextlib.redirect_stderr(io.StringIO()):  # warm-up: first-call costs belong to no configuration
        fit(build_model(train.shape, 10, p), train, valid, dataclasses.replace(p, epochs=1), p.seed)
    try:
        names = list(results)
        for round_ in range(args.rounds):
            for name in names[round_ % 4:] + names[:round_ % 4]:  # each configuration goes first in turn
                monitor = ConsoleMonitor() if name == "off" else Monitors(ConsoleMonitor(), VisdomMonitor(
                    urls[name], f"bench_{name}_{round_}", tmp / f"{name}{round_}.jsonl", "crossval",
                    every=(None, args.every)))
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    monitor.start({"stage": "crossval", "params": p.to_dict(), "device": "cpu",
                                   "classes": [str(i) for i in range(10)], "total_epochs": args.epochs})
                    seed_everything(p.seed)
                    model = build_model(train.shape, 10, p)
                    started, cpu = time.perf_counter(), time.process_time()
                    fit(model, train, valid, p, p.seed, monitor, tags={"variant": "baseline", "fold": 0})
                    trained, cpu = time.perf_counter(), time.process_time() - cpu
                    monitor.close()
                    closed = time.perf_counter()
                results[name]["fit"].append(trained - started)
                results[name]["cpu"].append(cpu)
                results[name]["close"].append(closed - trained)
                results[name]["warnings"].append(err.getvalue().count("warning"))
                print(f"round {round_} {name}: fit {trained - started:.2f} s (CPU {cpu:.2f} s), "
                      f"close {closed - trained:.2f} s, "
                      f"warnings {results[name]['warnings'][-1]}", file=sys.stderr)
    finally:
        process.terminate()
    # the training thread's share, measured alone: one on_step call (per batch) into a live monitor
    monitor = Monitors(ConsoleMonitor(), VisdomMonitor(urls["absent"], "bench_hook", tmp / "hook.jsonl", "crossval"))
    loss, tags = torch.tensor(0.5), {"variant": "baseline", "fold": 0}
    with contextlib.redirect_stderr(io.StringIO()):
        started = time.perf_counter()
        for i in range(20_000):
            monitor.on_step(tags, i / 157, loss, 0.01)
        hook_us = (time.perf_counter() - started) / 20_000 * 1e6
        monitor.close()
    print(f"on_step into the live monitor: {hook_us:.1f} us per batch "
          f"({hook_us * 157 / 1e3:.2f} ms per 157-batch epoch)")
    print(f"| monitor | median fit s ({args.rounds} rounds, {args.epochs} epoch(s) x {len(train)} images) "
          "| fit / off (median of rounds) | CPU / off (median of rounds) | close s (max) | warnings per run (max) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        wall = statistics.median(a / b for a, b in zip(r["fit"], results["off"]["fit"]))
        cpu = statistics.median(a / b for a, b in zip(r["cpu"], results["off"]["cpu"]))
        print(f"| {name} | {statistics.median(r['fit']):.2f} | {wall:.3f} | {cpu:.3f} "
              f"| {max(r['close']):.2f} | {max(r['warnings'])} |")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
