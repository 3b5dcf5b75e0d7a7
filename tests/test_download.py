import dataclasses
import gzip
import hashlib
from pathlib import Path

import pytest

from foldwise.datasets import Source
from foldwise.download import DownloadError, content_md5, download


def make_source(tmp_path: Path, mirrors: tuple[str, ...]) -> tuple[Source, bytes]:
    payload = b"foldwise test payload" * 100
    return Source(files={"data.bin.gz": hashlib.md5(payload).hexdigest()}, mirrors=mirrors,
                  classes=("a", "b"), read=lambda p: {}, install_hint="install the test files"), payload


def gz(path: Path, payload: bytes, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, compresslevel=level))


def test_content_md5_is_the_same_for_different_compressions(tmp_path):
    gz(tmp_path / "a.gz", b"x" * 1000, 1)
    gz(tmp_path / "b.gz", b"x" * 1000, 9)
    assert (tmp_path / "a.gz").read_bytes() != (tmp_path / "b.gz").read_bytes()
    assert content_md5(tmp_path / "a.gz") == content_md5(tmp_path / "b.gz") == hashlib.md5(b"x" * 1000).hexdigest()


def test_bad_mirror_falls_through_to_a_good_one(tmp_path):
    source, payload = make_source(tmp_path, (str(tmp_path / "bad"), str(tmp_path / "good")))
    gz(tmp_path / "bad" / "data.bin.gz", b"corrupted", 6)
    gz(tmp_path / "good" / "data.bin.gz", payload, 9)
    used = download(source, tmp_path / "out")
    assert used == {"data.bin.gz": str(tmp_path / "good")}
    assert gzip.decompress((tmp_path / "out" / "data.bin.gz").read_bytes()) == payload
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data.bin.gz"]  # no .part left


def test_downloads_over_http_when_local_mirror_missing(tmp_path, http_mirror):
    root, url = http_mirror
    source, payload = make_source(tmp_path, (str(tmp_path / "missing"), url))
    gz(root / "data.bin.gz", payload, 5)
    assert download(source, tmp_path / "out") == {"data.bin.gz": url}
    assert content_md5(tmp_path / "out" / "data.bin.gz") == source.files["data.bin.gz"]


def test_extra_mirror_is_tried_first(tmp_path, http_mirror):
    root, url = http_mirror
    source, payload = make_source(tmp_path, (url,))
    gz(tmp_path / "mine" / "data.bin.gz", payload, 5)
    assert download(source, tmp_path / "out", [str(tmp_path / "mine")]) == {"data.bin.gz": str(tmp_path / "mine")}


def test_error_lists_every_place_tried_and_how_to_fix(tmp_path, http_mirror):
    root, url = http_mirror
    source, _ = make_source(tmp_path, (str(tmp_path / "missing"), url))
    gz(root / "data.bin.gz", b"wrong content", 5)
    with pytest.raises(DownloadError) as info:
        download(source, tmp_path / "out")
    message = str(info.value)
    assert "could not get data.bin.gz" in message
    assert f"{tmp_path / 'missing'}/data.bin.gz: " in message
    assert f"{url}/data.bin.gz: checksum mismatch" in message
    assert "How to fix: install the test files" in message
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written


def test_interrupted_download_is_a_clean_retry(tmp_path):
    """A server that cuts the connection mid-file: nothing partial is kept, the next mirror is used."""
    import socket
    import threading

    source, payload = make_source(tmp_path, ())
    body = gzip.compress(payload)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_half_once():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
        conn.close()

    threading.Thread(target=serve_half_once, daemon=True).start()
    gz(tmp_path / "good" / "data.bin.gz", payload, 9)
    cut = f"http://127.0.0.1:{port}"
    with pytest.raises(DownloadError, match=r"connection closed after \d+ of \d+ bytes"):
        download(dataclasses.replace(source, mirrors=(cut,)), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    threading.Thread(target=serve_half_once, daemon=True).start()
    used = download(dataclasses.replace(source, mirrors=(cut, str(tmp_path / "good"))), tmp_path / "out")
    listener.close()
    assert used == {"data.bin.gz": str(tmp_path / "good")}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data.bin.gz"]
