import dataclasses
import gzip
import hashlib
from pathlib import Path

import pytest

from foldwise.data.checksums import file_md5s
from foldwise.data.download import DownloadError, download
from foldwise.data.sources import Source


def make_source(tmp_path: Path, mirrors: tuple[str, ...]) -> tuple[Source, bytes]:
    payload = b"foldwise test payload" * 100
    return Source(files={"data.bin.gz": hashlib.md5(payload).hexdigest()}, mirrors=mirrors,
                  classes=("a", "b"), read=lambda p: {}, install_hint="install the test files"), payload


def gz(path: Path, payload: bytes, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, compresslevel=level))


def test_content_md5_is_the_same_for_different_compressions_and_the_raw_md5_is_not(tmp_path):
    gz(tmp_path / "a.gz", b"x" * 1000, 1)
    gz(tmp_path / "b.gz", b"x" * 1000, 9)
    assert (tmp_path / "a.gz").read_bytes() != (tmp_path / "b.gz").read_bytes()
    (raw_a, content_a), (raw_b, content_b) = file_md5s(tmp_path / "a.gz"), file_md5s(tmp_path / "b.gz")
    assert content_a == content_b == hashlib.md5(b"x" * 1000).hexdigest()
    assert raw_a == hashlib.md5((tmp_path / "a.gz").read_bytes()).hexdigest() != raw_b
    (tmp_path / "plain").write_bytes(b"y" * 10)
    assert file_md5s(tmp_path / "plain") == (hashlib.md5(b"y" * 10).hexdigest(),) * 2


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
    assert file_md5s(tmp_path / "out" / "data.bin.gz")[1] == source.files["data.bin.gz"]


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


class CuttingServer:
    """HTTP on 127.0.0.1 that cuts the first ``cuts`` responses halfway; honours Range if ``ranges``."""

    def __init__(self, body: bytes, cuts: int, ranges: bool = True) -> None:
        import socket
        import threading

        self.body, self.cuts, self.ranges, self.requests = body, cuts, ranges, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import re

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            request = conn.recv(65536).decode()
            self.requests.append(request)
            start = re.search(r"Range: bytes=(\d+)-", request, re.I)
            if start and self.ranges:
                offset = int(start.group(1))
                head = (f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {offset}-{len(self.body) - 1}/"
                        f"{len(self.body)}\r\n")
            else:
                offset, head = 0, "HTTP/1.1 200 OK\r\n"
            part = self.body[offset:]
            if len(self.requests) <= self.cuts:
                sent = part[: max(1, len(part) // 2)]
            else:
                sent = part
            conn.sendall(f"{head}Content-Length: {len(part)}\r\nConnection: close\r\n\r\n".encode() + sent)
            conn.close()

    def close(self) -> None:
        self.listener.close()


def test_interrupted_download_resumes_where_it_stopped(tmp_path):
    source, payload = make_source(tmp_path, ())
    body = gzip.compress(payload)
    server = CuttingServer(body, cuts=1)
    used = download(dataclasses.replace(source, mirrors=(server.url,)), tmp_path / "out")
    server.close()
    assert used == {"data.bin.gz": server.url}
    assert (tmp_path / "out" / "data.bin.gz").read_bytes() == body
    assert len(server.requests) == 2 and f"Range: bytes={len(body) // 2}-" in server.requests[1]


def test_server_without_range_support_gets_a_clean_restart(tmp_path):
    source, payload = make_source(tmp_path, ())
    body = gzip.compress(payload)
    server = CuttingServer(body, cuts=1, ranges=False)
    download(dataclasses.replace(source, mirrors=(server.url,)), tmp_path / "out")
    server.close()
    assert (tmp_path / "out" / "data.bin.gz").read_bytes() == body  # not the first half twice


def test_download_that_keeps_failing_is_named_and_leaves_nothing(tmp_path):
    """Every attempt cut: an interrupted-download error, no partial file, the next mirror used."""
    source, payload = make_source(tmp_path, ())
    server = CuttingServer(gzip.compress(payload), cuts=100)
    with pytest.raises(DownloadError, match=r"connection closed after \d+ of \d+ bytes \(interrupted download"):
        download(dataclasses.replace(source, mirrors=(server.url,)), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    gz(tmp_path / "good" / "data.bin.gz", payload, 9)
    used = download(dataclasses.replace(source, mirrors=(server.url, str(tmp_path / "good"))), tmp_path / "out")
    server.close()
    assert used == {"data.bin.gz": str(tmp_path / "good")}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data.bin.gz"]
