"""Files from npm packages: pinned versions, each tarball checked against its pinned sha512.

The npm registry answers where CDNs may not (our machines reach only the
package registries), so browser assets (visdom's page, Vega for
``dvc plots``) come from there, installed by the set-up, never at run time.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

REGISTRY_ENV = "npm_config_registry"  # npm's own setting: a mirror, when the public registry is out of reach
DEFAULT_REGISTRY = "https://registry.npmjs.org"
TIMEOUT_S = 60.0


def tarball_url(spec: str, registry: str | None = None) -> str:
    """``name@version`` -> the registry's tarball URL (npm's fixed layout: ``name/-/name-version.tgz``)."""
    name, version = spec.rsplit("@", 1)
    registry = (registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY).rstrip("/")
    return f"{registry}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def check_integrity(spec: str, data: bytes, integrity: str) -> None:
    """Raise unless ``data`` has the pinned sha512 (npm's ``integrity`` field without ``sha512-``)."""
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != integrity:
        raise ValueError(f"{spec}: tarball sha512 is {actual}, expected the pinned {integrity}; "
                         "the registry or a mirror served different bytes, so nothing was installed")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - a fixed https registry
        return response.read()


def checked_files(spec: str, integrity: str, members: list[str], registry: str | None = None,
                  fetch: Callable[[str], bytes] = fetch, log: Callable[[str], None] = print) -> dict[str, bytes]:
    """The bytes of ``members`` of package ``spec`` (``name@version``), after checking the tarball's sha512."""
    url = tarball_url(spec, registry)
    log(f"npm: {spec} from {url}")
    try:
        data = fetch(url)
    except OSError as exc:
        raise OSError(f"could not download {spec} from {url} ({exc}); set {REGISTRY_ENV} to an npm "
                      "mirror you can reach, or run the set-up where the npm registry answers") from exc
    check_integrity(spec, data, integrity)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in members:
            extracted = tar.extractfile(member)
            if extracted is None:
                raise ValueError(f"{spec}: {member} is not a file in {url}")
            out[member] = extracted.read()
    return out


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
