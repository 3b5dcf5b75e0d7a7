"""End to end: the real visdom server, offline, fed by a real `dvc exp run`, seen by real Chromium.

Everything runs in a network namespace that has only loopback (``unshare
-n``; needs root, which CI has), so the server provably starts without
downloading anything. Where namespaces are not allowed the tests run on the
host's loopback instead and say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_pipeline import ran_stages, run

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ARTIFACTS = Path(os.environ.get("FOLDWISE_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


class Net:
    """Runs commands inside an offline network namespace (or on the host when that is not allowed)."""

    def __init__(self) -> None:
        self.holder = None
        self.prefix: list[str] = []
        try:
            holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep 3600"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        if holder.stdout.readline().strip() == "up":
            self.holder, self.prefix = holder, ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
        else:
            holder.kill()

    @property
    def isolated(self) -> bool:
        return self.holder is not None

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.prefix + argv, capture_output=True, text=True, timeout=600, **kwargs)

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.prefix + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                **kwargs)

    def python(self, code: str) -> str:
        done = self.run([sys.executable, "-c", code])
        assert done.returncode == 0, done.stderr
        return done.stdout

    def close(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``foldwise-visdom`` started the way README says, on a free loopback port."""

    def __init__(self, net: Net, folder: Path, env: dict[str, str] | None = None) -> None:
        self.net, self.port, self.folder = net, free_port(), folder
        folder.mkdir(parents=True, exist_ok=True)
        self.process = net.popen([str(BIN / "foldwise-visdom"), "--port", str(self.port)], cwd=folder,
                                 env={**os.environ, **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"foldwise-visdom exited:\n{self.process.stdout.read()}")
            code = net.python(f"import urllib.request as u\ntry: print(u.urlopen('{self.url}', timeout=1).status)\n"
                              "except Exception as e: print(e)")
            if code.strip() in ("200", "HTTP Error 400: Bad Request"):
                return
            time.sleep(0.3)
        raise AssertionError("the visdom server did not answer within 30 s")

    def windows(self, env: str) -> dict:
        """Every window of ``env``, through the server's own HTTP API (POST /win_data)."""
        out = self.net.python(
            "import json, urllib.request as u\n"
            f"r = u.urlopen(u.Request('{self.url}/win_data', "
            f"data=json.dumps({{'eid': '{env}', 'win': None}}).encode()))\n"
            "print(r.read().decode())")
        return json.loads(out)

    def stop(self) -> str:
        self.process.terminate()
        try:
            return self.process.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.communicate()[0]


@pytest.fixture(scope="module")
def net():
    net = Net()
    if net.isolated:  # the namespace really is offline: nothing but loopback
        probe = net.run([sys.executable, "-c", "import socket; socket.create_connection(('104.16.0.35', 443), 2)"])
        assert probe.returncode != 0 and "unreachable" in probe.stderr
    else:
        print("no network namespace (not root?): the live tests use the host's loopback", file=sys.stderr)
    yield net
    net.close()


def steps_per_run(n: int, batch: int, epochs: int) -> int:
    per_epoch = -(-n // batch) - (1 if n > 1 and n % batch == 1 else 0)
    return per_epoch * epochs


def traces(window: dict) -> dict[str, int]:
    return {t.get("name"): len(t["x"]) for t in window["content"]["data"]}


def screenshot(net: Net, url: str, path: Path, tmp: Path, size: str = "1500,2300") -> np.ndarray:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium not found: run `make test` (installs Debian's chromium)"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = net.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium'}", f"--window-size={size}",
                    "--virtual-time-budget=20000", f"--screenshot={path}", url])
    assert path.is_file(), done.stderr[-2000:]
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def colour_pixels(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    return int((np.abs(image - np.array(rgb)).max(axis=2) <= tolerance).sum())


def test_a_dvc_experiment_streams_into_the_offline_live_view(net, digits_copy, tmp_path):
    from foldwise.data.layout import read_manifest
    from foldwise.training.crossval import make_folds

    repo = digits_copy  # reproduced with the monitor off
    server = Server(net, tmp_path / "viz")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo / "src"),
           "DVC_NO_ANALYTICS": "1", "FOLDWISE_DEVICE": "cpu", "FOLDWISE_VISDOM": server.url,
           "FOLDWISE_VISDOM_EVERY": "1"}
    # as far as evaluate, the last stage that draws in the live view
    done = net.run(["dvc", "exp", "run", "-n", "live-run", "-S", "epochs=3", "evaluate"], cwd=repo, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ran_stages(done.stdout) == {"crossval", "train", "evaluate"}
    assert "warning" not in done.stdout + done.stderr

    # one environment, named after the experiment, holding every stage's windows
    windows = server.windows("foldwise_live-run")
    assert set(windows) == {f"crossval_{w}" for w in ("info", "step_loss", "lr", "loss", "accuracy", "cv")} | \
        {f"train_{w}" for w in ("info", "step_loss", "lr", "loss", "accuracy", "confusion")} | \
        {"evaluate_confusion", "evaluate_examples"}

    # the expected number of points: every step (FOLDWISE_VISDOM_EVERY=1) and every epoch of every run
    manifest = read_manifest(repo / "data/prepared")
    train = manifest.query("split == 'train'")
    variants = ["baseline", "l2", "dropout"]
    folds = make_folds(train["label"].to_numpy(), 2, 42)
    runs = {f"{v} fold {f}": steps_per_run(len(folds[f][0]), 64, 3) for v in variants for f in range(2)}
    assert traces(windows["crossval_step_loss"]) == runs
    assert traces(windows["crossval_lr"]) == runs
    for name in ("crossval_loss", "crossval_accuracy"):
        assert traces(windows[name]) == {f"{r} {s}": 3 for r in runs for s in ("train", "valid")}
    chosen = json.loads((repo / "reports/evaluate/provenance.json").read_text())["variant"]
    assert traces(windows["train_step_loss"]) == {f"final {chosen}": steps_per_run(len(train), 64, 3)}
    assert traces(windows["train_loss"]) == {f"final {chosen} {s}": 3 for s in ("train", "valid")}
    bars = windows["crossval_cv"]["content"]["data"][0]
    assert bars["x"] == variants and all(t.endswith("(2 folds)") for t in bars["hovertext"])
    cv = json.loads((repo / "reports/cv.json").read_text())
    assert bars["y"] == pytest.approx([cv["variants"][v]["valid_acc_mean"] for v in variants], abs=1e-6)
    assert "finished" in windows["crossval_info"]["content"] and "ETA" in windows["train_info"]["content"]
    valid_confusion = windows["train_confusion"]["content"]["data"][0]
    assert np.sum(valid_confusion["z"]) == (manifest["split"] == "valid").sum()
    assert valid_confusion["x"] == [str(d) for d in range(10)]
    assert windows["train_confusion"]["title"].endswith(f"(final {chosen}, epoch 3)")
    test_confusion = windows["evaluate_confusion"]["content"]["data"][0]
    assert np.sum(test_confusion["z"]) == (manifest["split"] == "test").sum()
    accuracy = json.loads((repo / "reports/metrics.json").read_text())["test"]["accuracy"]
    assert f"accuracy {accuracy:.4f}" in windows["evaluate_confusion"]["title"]
    assert windows["evaluate_examples"]["type"] == "image"

    # the environment is saved under the server's project folder
    assert (tmp_path / "viz/.foldwise/visdom/envs/foldwise_live-run.json").is_file()
    # switching the live view on or off re-runs nothing
    assert ran_stages(run(repo, "dvc", "repro", "evaluate").stdout) == set()

    # `dvc plots show` with no flags writes a page with a Vega plot per curve file, inlined (.dvc/config's
    # offline template; test_experiments draws such a page in Chromium)
    run(repo, "dvc", "plots", "show", "-o", "plots-html")
    live = len(list((repo / "reports/live").rglob("*.tsv")))  # dvclive's curves: one plot each
    assert live == 3 * 5 + 5  # crossval: 3 variants x 5 metrics; train: 5 metrics
    html = (repo / "plots-html/index.html").read_text()
    assert html.count("vegaEmbed(") >= 8 + live and "<script src=" not in html

    # a real browser renders the plots: count pixels of plotly's trace colours
    shot = screenshot(net, f"{server.url}/env/foldwise_live-run", ARTIFACTS / "live-view.png", tmp_path)
    drawn = {c: colour_pixels(shot, c) for c in [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]}
    assert sum(n > 150 for n in drawn.values()) >= 3, drawn
    print(f"screenshot: {ARTIFACTS / 'live-view.png'}")

    # the log replays the same windows into a server started afterwards (with visdom's own client)
    log = repo / ".foldwise/visdom/logs/foldwise_live-run.jsonl"
    later = Server(net, tmp_path / "later")
    net.python("from visdom import Visdom\n"
               f"Visdom(port={later.port}, use_incoming_socket=False, raise_exceptions=True).replay_log('{log}')")
    replayed = later.windows("foldwise_live-run")
    assert set(replayed) == set(windows)
    for name, window in windows.items():
        assert {**replayed[name], "contentID": None} == {**window, "contentID": None}, name
    # a plain `dvc repro` (no experiment name): its stages share one environment named by its start
    done = net.run(["dvc", "repro", "--force", "--single-item", "train", "evaluate"], cwd=repo, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    names = set(re.findall(r"live view: \S+/env/(\S+) ", done.stderr))
    assert len(names) == 1 and re.fullmatch(r"foldwise_\d{4}-\d\d-\d\d-\d{6}", name := names.pop())
    assert {"train_loss", "train_confusion", "evaluate_examples"} <= set(server.windows(name))
    later.stop()
    assert "Downloading scripts" not in server.stop()


def test_a_login_server_accepts_only_the_monitor_that_logs_in(net, tmp_path):
    login = {"VISDOM_USERNAME": "ana", "VISDOM_PASSWORD": "s3cret"}
    server = Server(net, tmp_path / "viz", env=login)
    anonymous = net.python(
        "import urllib.request as u\n"
        f"try: u.urlopen(u.Request('{server.url}/events', data=b'{{}}'))\n"
        "except Exception as e: print(e)")
    assert "400" in anonymous  # visdom answers 400 to a request without the login cookie
    code = f"""
import os, torch
os.environ.update({login!r})
from foldwise.live.visdom_monitor import VisdomMonitor, Sender
m = VisdomMonitor('{server.url}', 'locked', '{tmp_path / "log.jsonl"}', 'train', every=(1, None))
m.start({{'stage': 'train', 'total_epochs': 1, 'params': {{}}, 'device': 'cpu'}})
m.on_epoch_end({{'variant': 'l2', 'epoch': 1, 'train_loss': 0.5, 'train_acc': 0.8, 'valid_loss': 0.6,
                'valid_acc': 0.7, 'lr': 0.01, 'seconds': 1.0}})
m.close()
import json
s = Sender('{server.url}')
s._login()
print(json.dumps(sorted(json.loads(s.session.post('{server.url}/win_data',
      data=json.dumps({{'eid': 'locked', 'win': None}})).text))))
print('warnings', len(m.warnings))
"""
    out = net.python(code).splitlines()
    assert json.loads(out[-2]) == ["train_accuracy", "train_info", "train_loss"]
    assert out[-1] == "warnings 0"
    server.stop()
