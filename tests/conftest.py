"""Shared fixtures: tiny synthetic data in the real on-disk formats, shrunken params."""

from __future__ import annotations

import ast
import dataclasses
import functools
import gzip
import http.server
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from foldwise.core.params import Params
from foldwise.data.batches import Preloaded
from foldwise.data.layout import decode_all, read_classes, split_files
from foldwise.data.normalize import to_inputs
from foldwise.training.resume import Checkpoints

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "foldwise"

CLASSES = ["T-shirt/top", "Trouser", "Pullover"]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzip IDX file, the MNIST on-disk format."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_images(n: int, classes: int = 3, size: int = 12, channels: int = 1,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic images: class k has a bright band at row block k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
    band = size // classes
    for i, label in enumerate(labels):
        images[i, label * band : (label + 1) * band] += 150
    return images, labels.astype(np.int64)


@dataclasses.dataclass
class ImageSet:
    """Decoded images (uint8 N x C x H x W), labels (int64 N) and class names: what the tests train on."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


def train_valid(images: ImageSet, stats: dict) -> tuple[Preloaded, Preloaded]:
    """``images`` normalised on the CPU as two batch sources: the first 60 (train) and the rest (valid)."""
    x = to_inputs(images.images, stats, torch.device("cpu"))
    return Preloaded(x[:60], images.labels[:60]), Preloaded(x[60:], images.labels[60:])


def read_split(prepared_dir: Path, split: str) -> ImageSet:
    """A prepared split, decoded through the package's public readers."""
    files = split_files(prepared_dir, split)
    return ImageSet(decode_all(files), files.labels, read_classes(prepared_dir))


E2E = Path(__file__).resolve().parent / "e2e"
# Modules that start Ray: under pytest-xdist their workers take turns (``one_ray_at_a_time``).
RAY_MODULES = {"tests/training/test_fanout.py", "tests/training/test_fanout_cluster.py", "tests/e2e/test_scale_out.py"}


def pytest_itemcollected(item):
    """Everything under tests/e2e/ is an end-to-end test (real dvc, Visdom, a browser, subprocesses):
    ``make quick`` (``pytest -m "not e2e"``) leaves them out."""
    if E2E in Path(item.fspath).parents:
        item.add_marker(pytest.mark.e2e)


# Test modules that compare two paths through the same code, and the modules where those paths differ.
BOTH_SIDES = {"tests/training/test_fanout.py": {"foldwise.training.fanout"},
              "tests/training/test_fanout_cluster.py": {"foldwise.training.fanout"},
              "tests/training/test_ddp.py": {"foldwise.training.ddp", "foldwise.training.final",
                                             "foldwise.training.engine"},
              "tests/inference/test_export.py": {"foldwise.inference.export"}}


# ``make test``'s modules, slowest first (seconds of one run on 2 cores, summed over the module's tests).
# Two workers, each taking the next module when it is free, finish together when the longest modules
# start first: pytest-xdist's own order (most tests first) left the slow e2e modules, which have few
# tests, for last, and one worker ran on alone. A module not listed runs after them (e2e ones first).
# Only the order changes: a stale figure can cost minutes, never fail a test.
SLOWEST_FIRST = {"tests/e2e/test_pipeline.py": 226, "tests/e2e/test_experiments.py": 197,
                 "tests/e2e/test_sharing.py": 165, "tests/e2e/test_datasets.py": 125,
                 "tests/e2e/test_predict.py": 113, "tests/e2e/test_scale_out.py": 88, "tests/e2e/test_live.py": 72,
                 "tests/training/test_fanout.py": 66, "tests/e2e/test_benchmarks.py": 145,
                 "tests/training/test_ddp.py": 49, "tests/inference/test_export.py": 48,
                 "tests/training/test_fanout_cluster.py": 38, "tests/training/test_fanout_local.py": 30,
                 "tests/training/test_models.py": 29}


def slowest_first(items: list) -> list:
    """``items`` with whole modules in ``SLOWEST_FIRST``'s order, each module's tests in their own order."""
    def rank(module: str) -> tuple[float, bool]:
        return -SLOWEST_FIRST.get(module, 0), not module.startswith("tests/e2e/")

    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    return [item for module in sorted(modules, key=rank) for item in modules[module]]


def pytest_collection_modifyitems(config, items):
    """Plain runs: modules slowest first (``slowest_first``; ``make test`` keeps that order with
    ``--no-loadscope-reorder``).

    Under mutmut (``make mutation``), cheapest tests first: mutmut runs a mutant's tests with ``-x``
    in the order of a set, so a mutant a 0.1 s test kills could wait on a 26 s DDP test first. Modules
    stay contiguous (their module fixtures are set up once), ordered by their cheapest test; the
    durations are the ones mutmut measured (``mutants/mutmut-stats.json``).

    Tests that compare two paths through the same code (Ray with the sequential loop, torchrun's
    processes with one process, ONNX with torch) run only against mutants of the module where the two
    paths differ (``BOTH_SIDES``): elsewhere the mutant is on both sides, and they cost a third of
    the run. Leaving a test out can only let a mutant live, never count one killed."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    stats = Path("mutmut-stats.json")
    if not mutant or mutant in ("stats", "fail", "list_all_tests") or not stats.is_file():
        items[:] = slowest_first(items)
        return
    module = mutant.rsplit(".", 1)[0]  # foldwise.training.crossval.x_run_crossval__mutmut_5 -> its module
    kept = [item for item in items if module in BOTH_SIDES.get(item.nodeid.split("::")[0], {module})]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    import json

    seconds = json.loads(stats.read_text()).get("duration_by_test", {})

    def cost(item) -> float:
        return seconds.get(item.nodeid, 0.0)

    by_module: dict[str, list] = {}
    for item in items:
        by_module.setdefault(item.nodeid.split("::")[0], []).append(item)
    modules = sorted(by_module.values(), key=lambda group: min(cost(i) for i in group))
    items[:] = [item for group in modules for item in sorted(group, key=cost)]


@pytest.fixture(scope="module", autouse=True)
def one_ray_at_a_time(request, tmp_path_factory):
    """``make test`` runs two pytest-xdist workers with ``--dist loadfile`` (a module's tests run in order
    on one worker: the e2e modules build on their earlier tests' state). A module that starts Ray holds
    a lock shared by the workers while it runs, so no two Ray instances start at once."""
    module = Path(request.node.fspath).relative_to(PACKAGE.parents[1]).as_posix()
    if module not in RAY_MODULES or os.environ.get("PYTEST_XDIST_WORKER") is None:
        yield
        return
    from filelock import FileLock

    with FileLock(str(tmp_path_factory.getbasetemp().parent / "ray.lock")):
        yield


@pytest.fixture
def tiny_params() -> Params:
    """The real defaults, shrunk to run in well under a second per fit."""
    return dataclasses.replace(
        Params(), epochs=2, batch_size=16, k_folds=2, lr=0.01,
        variants={"baseline": {}, "l2": {"weight_decay": 0.01}, "dropout": {"dropout": 0.3}},
    )


@pytest.fixture
def tiny_set() -> ImageSet:
    images, labels = make_images(90)
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels), CLASSES)


@pytest.fixture
def tiny_stats() -> dict:
    return {"mean": [0.3], "std": [0.3]}


@pytest.fixture
def http_mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving the folder it yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output readable
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # serve_forever checks for shutdown every poll_interval: 0.5 s by default, paid by every test's teardown
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def jpeg_bytes(value: int, size: tuple[int, int] = (30, 24), seed: int = 0, mode: str = "RGB") -> bytes:
    """A small JPEG whose pixels sit around ``value`` (labels are encoded as brightness)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(value + rng.integers(-20, 20, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode != "RGB" else image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip archive of ``members`` (name -> bytes), stored uncompressed so bytes can be damaged."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


class RecordingSource(Preloaded):
    """A real batch source (preloaded tensors) that keeps what it was asked for, so tests can check
    which images a run trained and validated on: every subset (indices into this source) and every
    batch it yielded, in order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        super().__init__(x, y)
        self.subsets: list[tuple[np.ndarray, RecordingSource]] = []
        self.orders: list[torch.Tensor | None] = []  # one per pass: the order asked for (None: stored order)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # every batch yielded

    def subset(self, idx: np.ndarray) -> RecordingSource:
        part = super().subset(idx)
        child = RecordingSource(part.x, part.labels)
        self.subsets.append((np.asarray(idx).copy(), child))
        return child

    def batches(self, order, size):
        self.orders.append(None if order is None else order.clone())
        for x, y in super().batches(order, size):
            self.seen.append((x.clone(), y.clone()))
            yield x, y

    @property
    def trained(self) -> bool:
        """Was this source shuffled (trained on)? Evaluation reads it in stored order."""
        return any(order is not None for order in self.orders)


class Interrupted(Exception):
    pass


class Killed(Checkpoints):
    """Real checkpoints that stop the run after ``n`` saves, as a kill between epochs would."""

    def __init__(self, *args, n: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.n = n

    def save(self, name, state):
        super().save(name, state)
        self.n -= 1
        if self.n == 0:
            raise Interrupted


def module_file(name: str) -> Path:
    """The file of package module ``name`` (``data.prepare``; a subpackage: its ``__init__.py``)."""
    path = PACKAGE.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def foldwise_imports(path: Path) -> set[str]:
    """The package modules (``data.prepare``) ``path`` imports anywhere, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "foldwise":
            module = ".".join(node.module.split(".")[1:])
            for alias in node.names:  # `from foldwise.core import npm` names a module
                sub = f"{module}.{alias.name}".lstrip(".")
                found.add(sub if module_file(sub).is_file() else module)
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("foldwise.")}
    return {name for name in found if name and module_file(name).is_file()}
