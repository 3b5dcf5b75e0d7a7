"""The offline `dvc plots` page template: pinned Vega libraries inlined, DVC's placeholders kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from foldwise.reporting import plots_html
from foldwise.reporting.plots_html import TEMPLATE, write_template
from tests.live.test_assets import integrity, npm_tarball

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def vega_registry(http_mirror, monkeypatch):
    """A real HTTP server laid out like the npm registry, holding small stand-ins for the three packages."""
    root, url = http_mirror
    pinned = {}
    for name in ("vega", "vega-lite", "vega-embed"):
        data = npm_tarball({f"package/build/{name}.min.js": f'var {name.replace("-", "_")}="</script>";'.encode()})
        (root / name / "-").mkdir(parents=True)
        (root / name / "-" / f"{name}-1.0.0.tgz").write_bytes(data)
        pinned[f"{name}@1.0.0"] = (integrity(data), f"package/build/{name}.min.js")
    monkeypatch.setattr(plots_html, "VEGA", pinned)
    return root, url


def test_template_inlines_the_libraries_and_keeps_dvcs_placeholders(vega_registry, tmp_path):
    root, url = vega_registry
    path = tmp_path / "offline.html"
    write_template(path, registry=url, log=lambda _: None)
    html = path.read_text()
    assert "{plot_divs}" in html and "{refresh_tag}" in html
    assert "{scripts}" not in html  # where dvc-render would put its CDN <script src=...> tags
    assert "<script src=" not in html and html.count("<script>") == 3
    assert 'var vega_embed="<\\/script>";' in html  # a "</script>" inside the code cannot end the tag


def test_a_tampered_library_writes_no_template(vega_registry, tmp_path):
    root, url = vega_registry
    (root / "vega-lite/-/vega-lite-1.0.0.tgz").write_bytes(npm_tarball({"package/build/vega-lite.min.js": b"x"}))
    with pytest.raises(ValueError, match="vega-lite@1.0.0: tarball sha512 is .* expected the pinned"):
        write_template(tmp_path / "offline.html", registry=url, log=lambda _: None)
    assert not (tmp_path / "offline.html").exists()


def test_the_set_up_wrote_the_template_dvc_config_names():
    config = (ROOT / ".dvc/config").read_text()
    assert re.search(r"html_template = \.\./" + re.escape(str(TEMPLATE)), config)
    html = (ROOT / TEMPLATE).read_text()
    assert all(f"/* {spec} */" in html for spec in plots_html.VEGA)
