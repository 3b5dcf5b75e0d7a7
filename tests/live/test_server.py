"""foldwise-visdom: loopback by default, a login required anywhere else, clear errors."""

from __future__ import annotations

import hashlib

import pytest

from foldwise.live.server import credentials, is_loopback, main


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    monkeypatch.delenv("VISDOM_USERNAME", raising=False)
    monkeypatch.delenv("VISDOM_PASSWORD", raising=False)


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.1.2.3", "box.lan"]))


def test_loopback_needs_no_login_but_the_network_does(monkeypatch):
    assert credentials("127.0.0.1") is None
    with pytest.raises(ValueError, match="--host 0.0.0.0 makes the live view reachable from the network: "
                                         "set VISDOM_USERNAME and VISDOM_PASSWORD"):
        credentials("0.0.0.0")
    monkeypatch.setenv("VISDOM_USERNAME", "ana")
    with pytest.raises(ValueError, match="set both VISDOM_USERNAME and VISDOM_PASSWORD"):
        credentials("0.0.0.0")
    monkeypatch.setenv("VISDOM_PASSWORD", "s3cret")
    twice = hashlib.sha256(hashlib.sha256(b"s3cret").hexdigest().encode()).hexdigest()
    assert credentials("0.0.0.0") == credentials("127.0.0.1") == {"username": "ana", "password": twice}


def test_the_command_refuses_the_network_without_a_login(capsys):
    assert main(["--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 0.0.0.0 makes the live view reachable") and "VISDOM_PASSWORD" in err
    assert main(["serve", "--host", "10.0.0.1"]) == 2
