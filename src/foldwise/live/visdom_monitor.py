"""The Visdom monitor: training puts items on a bounded queue; a thread draws, logs and posts them.

The thread turns each item into visdom messages with visdom's own plotting
code, appends each to a log in visdom's replay format, and posts it with a
short timeout (visdom's own client has none and can hang forever). When the
server is absent, refuses or hangs, one warning is printed, the thread keeps
logging without posting, and every 30 s it tries again; on success it
replays the log, so a server started mid-run shows the whole run.
"""

from __future__ import annotations

import html
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldwise.live.settings import PASSWORD_ENV, USER_ENV
from foldwise.reporting.plot_data import confusion
from foldwise.training.callbacks import Monitor

TIMEOUT_S = (1.0, 2.0)  # HTTP connect and read timeouts, seconds
RETRY_S = 30.0  # after a failure, seconds before trying the server again
QUEUE_SIZE = 10_000  # events waiting for the thread; beyond it new ones are dropped, never waited for
CLOSE_WAIT_S = 10.0  # at the end of a stage, seconds to finish delivering before giving up
SIZE = {"width": 480, "height": 380}  # every window alike, so visdom's layout packs them into a tidy grid
_STOP = object()


def run_label(tags: dict[str, Any]) -> str:
    """A trace name for one training run: ``l2 fold 3`` in crossval, ``final l2`` in train."""
    if "fold" in tags:
        return f"{tags.get('variant', '')} fold {tags['fold']}".strip()
    return f"final {tags.get('variant', '')}".strip()


class Sender:
    """Posts visdom messages with timeouts (visdom's client has none); logs in when VISDOM_USERNAME is set."""

    def __init__(self, url: str, timeout: tuple[float, float] = TIMEOUT_S) -> None:
        import requests

        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        self.session.trust_env = False  # a proxy setting must not route loopback traffic elsewhere
        self._logged_in = False

    def _login(self) -> None:
        user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
        if user and password and not self._logged_in:
            from visdom.utils.server_utils import hash_password  # what visdom's own client sends

            r = self.session.post(self.url + "/", timeout=self.timeout,
                                  json={"username": user, "password": hash_password(password)})
            if r.status_code != 200:
                raise ConnectionError(f"login as {user} refused (HTTP {r.status_code}); "
                                      f"check {USER_ENV}/{PASSWORD_ENV}")
            self._logged_in = True

    def post(self, endpoint: str, msg: dict[str, Any]) -> None:
        self._login()
        r = self.session.post(f"{self.url}/{endpoint}", data=json.dumps(msg), timeout=self.timeout)
        if r.status_code != 200:
            raise ConnectionError(f"HTTP {r.status_code} from {self.url}/{endpoint}")

    def replay(self, log: Path) -> int:
        """Send every event of a log (visdom's ``[endpoint, msg]`` lines); returns how many."""
        count = 0
        with open(log, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    endpoint, msg = json.loads(line)
                    self.post(endpoint, msg)
                    count += 1
        return count


def _messages(env: str) -> Any:
    """A visdom client that builds messages with visdom's own plotting code and sends nothing."""
    from visdom import Visdom

    class Messages(Visdom):
        def __init__(self) -> None:
            super().__init__(env=env, offline=True, log_to_filename=os.devnull, use_incoming_socket=False,
                             raise_exceptions=True)
            self.out: list[tuple[str, dict[str, Any]]] = []

        def _send(self, msg: dict[str, Any], endpoint: str = "events", quiet: bool = False,
                  from_log: bool = False, create: bool = True) -> Any:
            msg["eid"] = msg.get("eid") or self.env
            self.out.append((endpoint, msg))
            return msg.get("win", True)

    return Messages()


class VisdomMonitor(Monitor):
    """Streams one stage's training into a visdom environment; see the module docstring."""

    wants_steps = True

    def __init__(self, url: str, env: str, log: Path, stage: str, every: tuple[int | None, float | None] = (None, 1.0),
                 predictions: bool = False) -> None:
        self.url, self.env, self.log, self.stage = url, env, Path(log), stage
        self.every_steps, self.every_s = every
        self.wants_predictions = predictions
        self.sender = Sender(url)
        self.dropped = 0
        self.warnings: list[str] = []
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._tags: dict[str, Any] | None = None
        self._run = ""
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._last = time.perf_counter()
        # state below belongs to the thread
        self._up, self._retry_at, self._deadline = True, 0.0, float("inf")
        self._created: set[str] = set()
        self._info: dict[str, Any] = {}
        self._progress: dict[str, Any] = {"epochs": 0, "started": time.time()}
        self._folds: list[dict[str, Any]] = []
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._viz = _messages(env)
        self._thread = threading.Thread(target=self._work, name="visdom-monitor", daemon=True)
        self._thread.start()

    # ---- training side: put and return ----
    def _put(self, *event: Any) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def start(self, info: dict[str, Any]) -> None:
        self._put("start", info)

    def on_step(self, tags: dict[str, Any], epoch: float, loss: torch.Tensor, lr: float) -> None:
        if tags is not self._tags:  # fit passes one tags dict per run: a new one starts a new trace
            self._tags, self._run = tags, run_label(tags)
            self._sum, self._count, self._last = None, 0, time.perf_counter()
        run = self._run
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1
        if self.every_steps is not None:
            due = self._count >= self.every_steps
        else:
            now = time.perf_counter()
            due = now - self._last >= self.every_s
        if due:
            # the mean loss since the last point, still on the device; the thread reads it
            self._put("step", run, epoch, self._sum / self._count, lr)
            self._sum, self._count, self._last = None, 0, time.perf_counter()

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self._put("epoch", dict(row))

    def on_predictions(self, tags: dict[str, Any], labels: torch.Tensor, predicted: torch.Tensor) -> None:
        self._put("predictions", dict(tags), labels, predicted)

    def on_fold_end(self, row: dict[str, Any]) -> None:
        self._put("fold", dict(row))

    def on_test(self, confusion: np.ndarray, classes: list[str], images: np.ndarray,
              actual: np.ndarray, predicted: np.ndarray) -> None:
        self._put("test", confusion, classes, images, actual, predicted)

    def close(self) -> None:
        self._deadline = time.monotonic() + CLOSE_WAIT_S
        try:
            self._queue.put(("close",), timeout=CLOSE_WAIT_S)
            self._queue.put(_STOP, timeout=CLOSE_WAIT_S)
        except queue.Full:
            pass
        self._thread.join(CLOSE_WAIT_S + sum(TIMEOUT_S) + 1.0)
        if self.dropped:
            self._warn(f"{self.dropped} live-view events were dropped (the queue was full)")

    # ---- the thread ----
    def _warn(self, text: str) -> None:
        if not self.warnings:
            print(f"warning: visdom: {text}", file=sys.stderr, flush=True)
        self.warnings.append(text)

    def _work(self) -> None:
        try:
            log = open(self.log, "a", encoding="utf-8")  # noqa: SIM115 - held for the thread's life
        except OSError as exc:
            self._warn(f"cannot write the event log {self.log} ({exc}); the live view is not logged")
            log = None
        while True:
            event = self._queue.get()
            if event is _STOP:
                break
            try:
                messages = self._draw(*event)
            except Exception as exc:  # noqa: BLE001 - a drawing bug must not end the thread
                self._warn(f"could not draw {event[0]!r} ({type(exc).__name__}: {exc}); training continues")
                continue
            for endpoint, msg in messages:
                if log is not None and endpoint in ("events", "update"):  # what visdom's replay_log accepts
                    try:
                        log.write(json.dumps([endpoint, msg]) + "\n")
                        log.flush()
                    except OSError as exc:  # a full disk: keep posting, stop logging
                        self._warn(f"cannot write the event log {self.log} ({exc})")
                        log = None
                self._deliver(endpoint, msg)
        if log is not None:
            log.close()

    def _deliver(self, endpoint: str, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        if now > self._deadline:
            return  # the stage has ended and waited long enough: the log has it
        if self._up:
            try:
                self.sender.post(endpoint, msg)
                return
            except Exception as exc:  # noqa: BLE001 - absent, refusing, hanging or broken: same answer
                self._up, self._retry_at = False, now + RETRY_S
                self._warn(f"no answer from {self.url} ({type(exc).__name__}); training continues, the live "
                           f"view goes to {self.log} (replay: foldwise-visdom replay {self.log})")
        elif now >= self._retry_at and endpoint in ("events", "update"):
            try:
                replayed = self.sender.replay(self.log)
                self._up = True
                print(f"visdom: {self.url} answers again; replayed {replayed} events", file=sys.stderr)
            except Exception:  # noqa: BLE001
                self._retry_at = time.monotonic() + RETRY_S

    def _win(self, name: str) -> str:
        return f"{self.stage}_{name}"

    def _line(self, name: str, trace: str, x: float, y: float, title: str, ylabel: str,
              xlabel: str = "epoch") -> None:
        win = self._win(name)
        X, Y = np.array([x], dtype=float), np.array([y], dtype=float)
        if win in self._created:
            self._viz.line(Y=Y, X=X, win=win, name=trace, update="append")
        else:
            self._created.add(win)
            self._viz.line(Y=Y, X=X, win=win, opts={"title": title, "xlabel": xlabel, "ylabel": ylabel,
                                                     "legend": [trace], "showlegend": True, **SIZE})

    def _draw(self, kind: str, *args: Any) -> list[tuple[str, dict[str, Any]]]:
        self._viz.out = []
        getattr(self, f"_draw_{kind}")(*args)
        return self._viz.out

    def _draw_start(self, info: dict[str, Any]) -> None:
        self._info = info
        self._progress = {"epochs": 0, "started": time.time(), "total": info.get("total_epochs") or 0}
        if self._progress["total"]:  # a training stage
            self._draw_info("starting")

    def _draw_info(self, status: str) -> None:
        info, progress = self._info, self._progress
        elapsed = time.time() - progress["started"]
        done, total = progress["epochs"], progress.get("total", 0)
        eta = f"{elapsed / done * (total - done):.0f} s" if done and total > done else "-"
        params = info.get("params", {})
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                       for k, v in params.items() if k != "variants")
        text = (f"<b>{html.escape(self.stage)}</b> in <b>{html.escape(self.env)}</b><br>"
                f"device: {html.escape(str(info.get('device', '?')))}<br>"
                f"status: {html.escape(status)}<br>"
                f"epochs done: {done} of {total or '?'}; elapsed {elapsed:.0f} s; ETA {eta}<br>"
                f"<details><summary>params</summary><table>{rows}</table></details>")
        self._viz.text(text, win=self._win("info"), opts={"title": f"{self.stage}: status", **SIZE})

    def _draw_step(self, run: str, epoch: float, loss: torch.Tensor, lr: float) -> None:
        self._line("step_loss", run, epoch, float(loss), f"{self.stage}: training loss per step", "cross-entropy")
        self._line("lr", run, epoch, lr, f"{self.stage}: learning rate", "learning rate")

    def _draw_epoch(self, row: dict[str, Any]) -> None:
        run = run_label(row)
        for split in ("train", "valid"):
            self._line("loss", f"{run} {split}", row["epoch"], row[f"{split}_loss"],
                       f"{self.stage}: loss per epoch", "cross-entropy")
            self._line("accuracy", f"{run} {split}", row["epoch"], row[f"{split}_acc"],
                       f"{self.stage}: accuracy per epoch", "accuracy")
        self._progress["epochs"] += 1
        self._draw_info(f"{run}, epoch {row['epoch']}: valid accuracy {row['valid_acc']:.4f}")

    def _draw_predictions(self, tags: dict[str, Any], labels: torch.Tensor, predicted: torch.Tensor) -> None:
        classes = self._info.get("classes") or [str(i) for i in range(int(labels.max()) + 1)]
        matrix = confusion(labels.cpu().numpy(), predicted.cpu().numpy(), range(len(classes)))
        self._confusion(matrix, classes,
                        f"{self.stage}: validation confusion ({run_label(tags)}, epoch {tags.get('epoch', '?')})")

    def _confusion(self, matrix: np.ndarray, classes: list[str], title: str) -> None:
        # plotly draws row 0 at the bottom: flip so the first class is on top, as in a table
        self._viz.heatmap(X=np.asarray(matrix, dtype=float)[::-1], win=self._win("confusion"),
                          opts={"title": title, "columnnames": list(classes), "rownames": list(classes)[::-1],
                                "xlabel": "predicted", "ylabel": "actual", "colormap": "Viridis",
                                **SIZE})
        layout = self._viz.out[-1][1]["layout"]
        for axis in ("xaxis", "yaxis"):  # class names, even "0".."9", are categories: one tick each
            layout[axis] = {**layout.get(axis, {}), "type": "category", "dtick": 1}
        longest = max(len(str(c)) for c in classes)  # room for the names, about 7 px a character
        layout["margin"] = {"l": 40 + 7 * longest, "b": 40 + 5 * longest, "t": 50, "r": 20}

    def _draw_fold(self, row: dict[str, Any]) -> None:
        self._folds.append(row)
        variants = list(dict.fromkeys(r["variant"] for r in self._folds))
        accs = [np.array([r["final_valid_acc"] for r in self._folds if r["variant"] == v]) for v in variants]
        means = [float(a.mean()) for a in accs]
        stds = [float(a.std(ddof=1)) if len(a) > 1 else 0.0 for a in accs]
        low = min(m - s for m, s in zip(means, stds))
        self._viz._send({
            "data": [{"type": "bar", "x": variants, "y": means, "name": "mean",
                      "error_y": {"type": "data", "array": stds, "visible": True},
                      "hovertext": [f"{m:.4f} ± {s:.4f} ({len(a)} folds)" for m, s, a in zip(means, stds, accs)],
                      "hoverinfo": "text+x"}],
            "layout": {"title": f"{self.stage}: valid accuracy, mean ± std of folds so far",
                       "xaxis": {"title": "variant"},
                       "yaxis": {"title": "accuracy", "range": [max(0.0, low - 0.02), min(1.0, max(means) + 0.02)]},
                       "margin": {"l": 60, "r": 20, "t": 60, "b": 50}},
            "win": self._win("cv"), "eid": self.env, "opts": {"title": "crossval: variants", **SIZE},
        })

    def _draw_test(self, confusion: np.ndarray, classes: list[str], images: np.ndarray,
                   actual: np.ndarray, predicted: np.ndarray) -> None:
        accuracy = float(np.trace(confusion) / max(1, confusion.sum()))
        self._confusion(confusion, classes, f"{self.stage}: test confusion (accuracy {accuracy:.4f})")
        from foldwise.reporting.figures import examples_grid  # matplotlib: here, not in every training stage

        grid = examples_grid(images, actual, predicted, classes)  # a matplotlib figure
        self._viz.image(grid, win=self._win("examples"),
                        opts={"title": f"{self.stage}: test images, true / predicted (red: wrong)",
                              "width": grid.shape[2] + 20, "height": grid.shape[1] + 50})

    def _draw_close(self) -> None:
        if self._progress.get("total"):
            self._draw_info("finished")
        self._viz.out.append(("save", {"data": [self.env], "eid": self.env}))
