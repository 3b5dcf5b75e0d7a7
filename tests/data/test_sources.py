import numpy as np
import pytest

from foldwise.data.sources import SOURCES, get_source, read_idx, read_idx_pair
from tests.conftest import make_images, write_idx


def test_read_idx_round_trips(tmp_path):
    images, labels = make_images(7, size=5)
    write_idx(tmp_path / "a-images-idx3-ubyte.gz", images[..., 0])
    write_idx(tmp_path / "a-labels-idx1-ubyte.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-images-idx3-ubyte.gz"), images[..., 0])
    splits = read_idx_pair(tmp_path, {"train": "a"})
    assert splits["train"][0].shape == (7, 5, 5, 1)
    np.testing.assert_array_equal(splits["train"][1], labels)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "x.idx")
    (tmp_path / "y.idx").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")
    with pytest.raises(ValueError, match="promises 5 bytes"):
        read_idx(tmp_path / "y.idx")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KeyError, match="unknown dataset 'imagenet'.*valid: fashion-mnist"):
        get_source("imagenet")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_source_is_complete(name):
    source = SOURCES[name]
    assert source.channels in (1, 3) and source.user_data in ("no", "optional", "required")
    if source.user_data == "required":  # your own images: nothing to download, classes from the data
        assert not source.files and not source.classes and source.user_hint
        return
    # a pinned md5, or None for an archive checked by its members' CRCs (see download.check_archive)
    assert source.files and all(md5 is None or len(md5) == 32 for md5 in source.files.values())
    assert source.mirrors and source.install_hint
    assert len(set(source.classes)) == len(source.classes) >= 2


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path):
    import io
    import os
    import pickle
    import tarfile

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    payload = pickle.dumps({b"data": Evil(), b"labels": [0]})
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        SOURCES["cifar10"].read(tmp_path)
    assert not (tmp_path / "pwned").exists()
