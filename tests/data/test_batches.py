"""Preloaded and streamed splits give the same batches, hence the same training, for the same seed."""

import dataclasses

import numpy as np
import pytest
import torch

from foldwise.data.batches import Preloaded, Streamed, default_workers, normalization_stats, open_split
from foldwise.data.layout import split_files
from foldwise.data.prepare import prepare
from foldwise.training.engine import fit, seed_everything
from foldwise.training.models import build_model
from tests.conftest import CLASSES, make_images

CPU = torch.device("cpu")
STATS = {"mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3]}


@pytest.fixture
def prepared(tmp_path):
    data = make_images(150, channels=3, seed=4)
    prepare({"train": data, "test": make_images(30, channels=3, seed=5)}, tuple(CLASSES), tmp_path, 30, 0, seed=0)
    return tmp_path


def test_budget_decides_preload_or_stream(prepared):
    assert isinstance(open_split(prepared, "train", STATS, CPU, memory_budget_mb=1), Preloaded)
    streamed = open_split(prepared, "train", STATS, CPU, memory_budget_mb=0, workers=0)  # 0 MB: nothing fits
    assert isinstance(streamed, Streamed) and streamed.shape == (3, 12, 12) and len(streamed) == 120


def test_same_batches_in_the_same_order(prepared):
    preloaded = open_split(prepared, "train", STATS, CPU, memory_budget_mb=1)
    streamed = open_split(prepared, "train", STATS, CPU, memory_budget_mb=0, workers=2)
    order = torch.randperm(len(preloaded), generator=torch.Generator().manual_seed(7))
    pairs = list(zip(preloaded.batches(order, 32), streamed.batches(order, 32), strict=True))
    assert len(pairs) == 4
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    idx = np.array([5, 0, 77])
    (xa, _), = preloaded.subset(idx).batches(torch.arange(3), 8)
    (xb, _), = streamed.subset(idx).batches(torch.arange(3), 8)
    assert torch.equal(xa, xb)


def test_stored_order_batches_are_views_and_match_both_paths(prepared):
    preloaded = open_split(prepared, "train", STATS, CPU, memory_budget_mb=1)
    streamed = open_split(prepared, "train", STATS, CPU, memory_budget_mb=0, workers=0)
    in_order = list(preloaded.batches(None, 50))
    assert [len(x) for x, _ in in_order] == [50, 50, 20]
    for (xa, ya), (xb, yb), (xc, yc) in zip(in_order, preloaded.batches(torch.arange(120), 50),
                                            streamed.batches(None, 50), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa, xc) and torch.equal(ya, yc)
        assert xa.untyped_storage().data_ptr() == preloaded.x.untyped_storage().data_ptr()  # no copy


def test_training_is_identical_on_both_paths(prepared, tiny_params):
    p = dataclasses.replace(tiny_params, epochs=2, batch_size=16)
    histories = []
    for budget in (1, 0):
        train = open_split(prepared, "train", STATS, CPU, budget, workers=0)
        valid = open_split(prepared, "valid", STATS, CPU, budget, workers=0)
        seed_everything(3)
        result = fit(build_model((3, 12, 12), 3, p), train, valid, p, seed=3)
        histories.append([{k: v for k, v in row.items() if k != "seconds"} for row in result.history])
    assert histories[0] == histories[1]


def test_split_files_lists_without_decoding(prepared):
    files = split_files(prepared, "test")
    assert len(files) == 30 and files.shape == (3, 12, 12) and files[0][0].dtype == torch.uint8


def test_workers_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FOLDWISE_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("FOLDWISE_WORKERS", "many")
    with pytest.raises(ValueError, match="FOLDWISE_WORKERS='many' is not valid"):
        default_workers()


def test_normalisation_statistics_come_from_the_train_split_only(tmp_path):
    """Test images far brighter than train images: statistics over every split would differ a lot,
    over train+valid a little; the normalize stage's must equal the train split's to the last bit."""
    train, test = make_images(60, seed=3), make_images(30, seed=4)
    test = (255 - test[0] // 4, test[1])  # bright
    manifest = prepare({"train": train, "test": test}, tuple(CLASSES), tmp_path, 15, 0, seed=0)
    stats = normalization_stats(tmp_path)
    sources = {"train": train[0], "test": test[0]}

    def direct(splits):
        rows = manifest[manifest.split.isin(splits)]
        pixels = np.stack([sources[s.split(":")[0]][int(s.split(":")[1])] for s in rows.source]) / 255
        return pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))

    mean, std = direct(["train"])
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-9)
    assert stats["pixels_per_channel"] == 45 * 12 * 12
    assert abs(stats["mean"][0] - direct(["train", "valid", "test"])[0][0]) > 0.1
    assert abs(stats["mean"][0] - direct(["train", "valid"])[0][0]) > 1e-4


def test_a_subset_keeps_labels_or_their_absence():
    x, y = torch.arange(10.0).view(5, 2), torch.tensor([0, 1, 2, 3, 4])
    part = Preloaded(x, y).subset(np.array([3, 1]))
    assert torch.equal(part.x, x[[3, 1]]) and torch.equal(part.labels, y[[3, 1]])
    assert Preloaded(x).subset(np.array([0])).labels is None



def test_batches_in_stored_order_are_consecutive_slices_of_the_given_size():
    """``predict``'s path (order None) in batches of 4 over 10 images: 0-3, 4-7, 8-9, each once."""
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    got = list(Preloaded(x, y).batches(None, 4))
    assert [b.flatten().tolist() for b, _ in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [t.tolist() for _, t in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert got[0][0].data_ptr() == x.data_ptr()  # a view, not a copy


def test_shipped_arrays_rebuild_the_very_tensor_open_split_preloads(prepared):
    """What a Ray run trains on (uint8 arrays, pickled as Ray ships them, normalised on arrival) is
    the preloading path's tensor, bit for bit."""
    import pickle

    from foldwise.data.batches import open_arrays

    preloaded = open_split(prepared, "train", STATS, CPU, memory_budget_mb=1)
    arrays = pickle.loads(pickle.dumps(open_arrays(prepared, "train", STATS)))
    assert arrays.images.dtype == np.uint8 and arrays.shape == preloaded.shape and len(arrays) == 120
    assert arrays.float_mb == pytest.approx(120 * 3 * 12 * 12 * 4 / 2**20)
    rebuilt = arrays.to_source(CPU)
    assert torch.equal(rebuilt.x, preloaded.x) and torch.equal(rebuilt.labels, preloaded.labels)
    assert torch.equal(arrays.labels, preloaded.labels)


def test_the_budget_is_the_float32_size_of_the_split_to_the_byte(tmp_path, monkeypatch, capsys):
    """128 images of 1 x 64 x 64: 128 x 4,096 values x 4 bytes is exactly 2 MiB."""
    grey = {"mean": [0.5], "std": [0.25]}
    prepare({"train": make_images(158, size=64, seed=1), "test": make_images(30, size=64, seed=2)}, tuple(CLASSES),
            tmp_path, 30, 0, seed=0)
    assert len(split_files(tmp_path, "train")) == 128
    capsys.readouterr()
    assert isinstance(open_split(tmp_path, "train", grey, CPU, memory_budget_mb=2), Preloaded)  # fits exactly
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("FOLDWISE_WORKERS", "3")
    streamed = open_split(tmp_path, "train", grey, CPU, memory_budget_mb=1)
    assert isinstance(streamed, Streamed) and streamed.workers == 3  # FOLDWISE_WORKERS unless given
    assert capsys.readouterr().out == "train: 2 MB of images exceeds memory_budget_mb=1; streaming from disk\n"
    assert open_split(tmp_path, "train", grey, CPU, memory_budget_mb=1, workers=0).workers == 0


def test_streaming_leaves_torchs_global_random_stream_alone(prepared):
    """Dropout draws from torch's global stream: reading batches must not, or streamed training would
    differ from preloaded training whenever the model has dropout."""
    streamed = open_split(prepared, "train", STATS, CPU, memory_budget_mb=0, workers=0)
    state = torch.get_rng_state()
    batches = list(streamed.batches(torch.randperm(len(streamed), generator=torch.Generator().manual_seed(0)), 16))
    assert len(batches) == 8 and torch.equal(torch.get_rng_state(), state)


def test_without_the_variable_workers_are_the_cpus_up_to_four(monkeypatch):
    monkeypatch.delenv("FOLDWISE_WORKERS", raising=False)
    for cpus, workers in ((1, 1), (2, 2), (4, 4), (8, 4), (None, 1)):  # None: the OS cannot tell
        monkeypatch.setattr("os.cpu_count", lambda cpus=cpus: cpus)
        assert default_workers() == workers


class _PidFiles:
    """The prepared files, each read noting which process decoded it (in ``log``)."""

    def __init__(self, files, log):
        self.files, self.log = files, log

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import os

        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return self.files[i]

    @property
    def shape(self):
        return self.files.shape

    @property
    def pixels(self):
        return None


def test_chunks_come_from_the_array_when_there_else_from_workers_decoding_the_files(prepared, tmp_path, monkeypatch):
    import os

    from foldwise.data.batches import uint8_chunks
    from foldwise.data.layout import PIXELS

    files = split_files(prepared, "train")
    assert files.pixels is not None
    decoded = torch.cat(list(uint8_chunks(files, workers=0)))
    # the array is what is read when there: a marked copy of it shows through
    marked = np.load(files.pixels)
    marked[0, 0, 0, 0] ^= 0xFF
    np.save(prepared / PIXELS.format(split="train"), marked)
    assert torch.cat(list(uint8_chunks(files, workers=0)))[0, 0, 0, 0] == marked[0, 0, 0, 0]
    # one image a chunk when the chunk size is below one image, none lost
    assert [len(c) for c in uint8_chunks(files, pixels=1, workers=0)] == [1] * len(files)
    # without the array, the files are decoded: by the given worker processes, FOLDWISE_WORKERS aside
    monkeypatch.setenv("FOLDWISE_WORKERS", "not a number")
    log = tmp_path / "pids.txt"
    chunks = list(uint8_chunks(_PidFiles(files, log), pixels=10 * 3 * 12 * 12, workers=2))  # 12 chunks of 10
    assert torch.equal(torch.cat(chunks), decoded)
    pids = set(log.read_text().split())
    assert str(os.getpid()) not in pids and len(pids) == 2
