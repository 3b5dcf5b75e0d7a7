"""Visdom's page assets: pinned tarballs from an npm registry, checked before anything is written."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import pytest

from foldwise.core.npm import check_integrity, tarball_url
from foldwise.live import assets as visdom_assets
from foldwise.live.assets import ASSETS, install_assets, missing_assets, visdom_version


def npm_tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def integrity(data: bytes) -> str:
    return base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
def demo_registry(http_mirror, monkeypatch):
    """A real HTTP server laid out like the npm registry, holding one small package the table pins."""
    root, url = http_mirror
    data = npm_tarball({"package/dist/demo.min.js": b"var demo = 1;", "package/README": b"x"})
    (root / "demo/-").mkdir(parents=True)
    (root / "demo/-/demo-1.0.0.tgz").write_bytes(data)
    assets = {"demo@1.0.0": (integrity(data), {"package/dist/demo.min.js": "js/demo.min.js"})}
    monkeypatch.setattr(visdom_assets, "ASSETS", assets)
    return root, url, data


def test_tarball_urls_follow_npms_layout(monkeypatch):
    monkeypatch.delenv("npm_config_registry", raising=False)
    assert tarball_url("d3@3.5.17") == "https://registry.npmjs.org/d3/-/d3-3.5.17.tgz"
    assert tarball_url("@scope/pkg@1.2.0", "http://mirror/") == "http://mirror/@scope/pkg/-/pkg-1.2.0.tgz"
    monkeypatch.setenv("npm_config_registry", "http://npm.internal")
    assert tarball_url("jquery@3.1.1") == "http://npm.internal/jquery/-/jquery-3.1.1.tgz"


def test_every_asset_visdoms_page_loads_is_pinned():
    pinned = {rel for _, files in ASSETS.values() for rel in files.values()}
    assert len(pinned) == 29  # 21 scripts, styles and fonts + 8 MathJax files, as visdom's downloader fetches
    assert all(len(base64.b64decode(sha)) == 64 for sha, _ in ASSETS.values())  # sha512 each


def test_the_set_up_installed_them():
    assert missing_assets() == [], "run `make test` (or `.venv/bin/foldwise-visdom install-assets`)"


def test_install_checks_the_tarball_and_writes_version_built_last(demo_registry, tmp_path):
    root, url, data = demo_registry
    static = tmp_path / "static"
    assert missing_assets(static) == ["js/demo.min.js", "version.built"]
    assert install_assets(static, registry=url, log=lambda _: None) == 2
    assert (static / "js/demo.min.js").read_bytes() == b"var demo = 1;"
    assert (static / "version.built").read_text() == visdom_version()
    assert missing_assets(static) == []
    (root / "demo/-/demo-1.0.0.tgz").unlink()  # nothing missing: nothing fetched
    assert install_assets(static, registry=url, log=lambda _: None) == 0


def test_a_tampered_tarball_installs_nothing(demo_registry, tmp_path):
    root, url, data = demo_registry
    (root / "demo/-/demo-1.0.0.tgz").write_bytes(npm_tarball({"package/dist/demo.min.js": b"evil()"}))
    static = tmp_path / "static"
    with pytest.raises(ValueError, match=r"demo@1.0.0: tarball sha512 is .* expected the pinned"):
        install_assets(static, registry=url, log=lambda _: None)
    assert not static.exists() or not any(static.rglob("*"))
    with pytest.raises(ValueError, match="pinned"):
        check_integrity("x@1", b"abc", integrity(b"abd"))


def test_an_unreachable_registry_names_the_setting(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(visdom_assets, "ASSETS", {"demo@1.0.0": ("x", {"package/a.js": "js/a.js"})})
    with pytest.raises(OSError, match="could not download demo@1.0.0 from http://127.0.0.1:.* set npm_config_registry"):
        install_assets(tmp_path, registry=f"http://127.0.0.1:{port}", log=lambda _: None)
    assert not (tmp_path / "version.built").exists()
