"""Visdom's browser assets from the npm registry: pinned, checksummed, never fetched at server start.

visdom 0.2.4's server downloads 29 scripts, styles and fonts from CDNs at
every start until ``static/version.built`` says they are there; offline it
exits or hangs. This module installs the same files from npm tarballs (the
registry answers where the CDNs may not), checks every tarball against the
registry's pinned sha512 before unpacking anything, and writes
``version.built`` last, so a half-finished install is never mistaken for a
good one.
"""

from __future__ import annotations

from pathlib import Path

from foldwise.core import npm

# npm package -> (sha512 integrity of its tarball, {path in tarball: file under visdom/static/}).
MATHJAX = "js/mathjax/2.7.5/"
ASSETS: dict[str, tuple[str, dict[str, str]]] = {
    "jquery@3.1.1": (
        "zuiWRmx65Kd1oFGdWLvAjbsumdOBFvs3r1vuqCyKFF79R7exBHNbiNEJ8LR+xkzgfxqBznMD/4Cv6PHXS6mvEw==",
        {"package/dist/jquery.min.js": "js/jquery.min.js"}),
    "bootstrap@3.3.7": (
        "qcFaisBrcBhTFkz1IUnGDYnX6ZWfFzH8zOixUDtHW9Ip+r+7MfMFav2rzy7cIHc7rgIg7xjhWBoo1mS/U26j4g==",
        {"package/dist/js/bootstrap.min.js": "js/bootstrap.min.js",
         "package/dist/css/bootstrap.min.css": "css/bootstrap.min.css",
         **{f"package/dist/fonts/glyphicons-halflings-regular.{ext}": f"fonts/glyphicons-halflings-regular.{ext}"
            for ext in ("eot", "woff2", "woff", "ttf")},
         # visdom's own downloader keeps the URL fragment in the file name.
         "package/dist/fonts/glyphicons-halflings-regular.svg":
             "fonts/glyphicons-halflings-regular.svg#glyphicons_halflingsregular"}),
    "react@16.2.0": (
        "ZmIomM7EE1DvPEnSFAHZn9Vs9zJl5A9H7el0EGTE6ZbW9FKe/14IYAlPbC8iH25YarEQxZL+E8VW7Mi7kfQrDQ==",
        {"package/umd/react.production.min.js": "js/react-react.min.js"}),
    "react-dom@16.2.0": (
        "zpGAdwHVn9K0091d+hr+R0qrjoJ84cIBFL2uU60KvWBPfZ7LPSrfqviTxGHWN0sjPZb2hxWzMexwrvJdKePvjg==",
        {"package/umd/react-dom.production.min.js": "js/react-dom.min.js"}),
    "react-modal@3.1.10": (
        "7b77AGWCkdg0YOf/qcYIGCpuwbxRwOA8P3UrUovk4grUNv+idOmHovJAx/Dcd3fuwHtgixxVjpcjVG60985MSA==",
        {"package/dist/react-modal.min.js": "js/react-modal.min.js"}),
    "plotly.js-dist-min@2.11.1": (
        "F9WWNht0D3yBLZGHbLoJNfvplXvy+GUPSsA/lCbMuYd/UwzSu6Vmyprxlps9Einw1LDS1hYBrJeioK0lE3ieXA==",
        {"package/plotly.min.js": "js/plotly-plotly.min.js"}),
    "sjcl@1.0.7": (
        "xQbiwKfiAj6vyk44ANJ5RRymALRdRZOuRoKNYkWUU404p/RFXmMaay1Z5vRn30GJjkD+psox4Jd38jZojSuNYA==",
        {"package/sjcl.js": "js/sjcl.js"}),
    "layout-bin-packer@1.4.0": (
        "dQOZnajbOBGIcS9YlzKrkRtMCGa2oEpyf1zGRn93suphSvPclJe54Sbgtb053GJ21DUk84IBzaeQvjn+Gb10fA==",
        {"package/dist/layout-bin-packer.js.map": "js/layout-bin-packer.js.map",
         "package/dist/layout-bin-packer.js": "js/layout_bin_packer.js"}),
    "d3@3.5.17": (
        "yFk/2idb8OHPKkbAL8QaOaqENNoMhIaSHZerk3oQsECwkObkCpJyjYwCe+OHiq6UEdhe1m8ZGARRRO3ljFjlKg==",
        {"package/d3.min.js": "js/d3.v3.min.js"}),
    "d3-selection-multi@1.0.1": (
        "mEnRkJ6A+Otd1LuRPV3az+s/RLDmIEhuz/MnT21O2nPcWNH7wZotdIlRjMA4Wpr+n7AESQ5fD8v1J3nL2Mnw9g==",
        {"package/build/d3-selection-multi.js": "js/d3-selection-multi.v1.js"}),
    "save-svg-as-png@1.4.17": (
        "7QDaqJsVhdFPwviCxkgHiGm9omeaMBe1VKbHySWU6oFB2LtnGCcYS13eVoslUgq6VZC6Tjq/HddBd1K6p2PGpA==",
        {"package/lib/saveSvgAsPng.js": "js/saveSvgAsPng.js"}),
    "react-resizable@1.4.6": (
        "4zLORO51u0/mlDsrVCAA4p266d+3mb2ZMNdiWOotAh/PdnfrRzZhgePmKE08PSQatXVIfMjmyD+Sapay8tmxdQ==",
        {"package/css/styles.css": "css/react-resizable-styles.css"}),
    "react-grid-layout@0.16.3": (
        "ytP92EqUjqcFhGzvdeKrK610dQ04GdFwRCWtD6PoeL5wR3liETcFISO7k8RBqnosV86JtXf/DwIfrL0COLs0gg==",
        {"package/css/styles.css": "css/react-grid-layout-styles.css"}),
    "classnames@2.2.5": (
        "DTt3GhOUDKhh4ONwIJW4lmhyotQmV2LjNlGK/J2hkwUcqcbKkCLAdJPtxQnxnlc7SR3f1CEXCyMmc7WLUsWbNA==",
        {"package/index.js": "fonts/classnames"}),
    "mathjax@2.7.5": (
        "OzsJNitEHAJB3y4IIlPCAvS0yoXwYjlo2Y4kmm9KQzyIBZt2d8yKRalby3uTRNN4fZQiGL2iMXjpdP1u2Rq2DQ==",
        {f"package/{path}": MATHJAX + path for path in (
            "MathJax.js", "config/Safe.js", "config/TeX-AMS-MML_HTMLorMML.js", "extensions/Safe.js",
            "jax/output/SVG/jax.js", "jax/output/SVG/config.js", "jax/output/SVG/fonts/TeX/fontdata.js",
            "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js")}),
}


def static_dir() -> Path:
    """visdom's ``static/`` folder: where its server looks for assets (inside the installed package)."""
    import visdom

    return Path(visdom.__file__).parent / "static"


def visdom_version() -> str:
    import visdom

    return (Path(visdom.__file__).parent / "VERSION").read_text().strip()


def missing_assets(static: Path | None = None) -> list[str]:
    """Files (relative to ``static/``) the page needs that are not installed; ``version.built`` included.

    Empty means visdom's server will start without downloading anything.
    """
    static = static or static_dir()
    missing = [rel for _, files in ASSETS.values() for rel in files.values() if not (static / rel).is_file()]
    built = static / "version.built"
    if not built.is_file() or built.read_text().strip() != visdom_version():
        missing.append("version.built")
    return missing


def install_assets(static: Path | None = None, registry: str | None = None,
                   fetch=npm.fetch, log=print) -> int:
    """Install every missing asset under ``static`` (visdom's own by default); returns files written.

    Each tarball is checked against its pinned sha512 before any file from it
    is written; each file is written under a temporary name and renamed, and
    ``version.built`` comes last, so an interrupted or failed install leaves
    the server reporting assets missing rather than serving broken ones.
    """
    static = static or static_dir()
    written = 0
    for spec, (integrity, files) in ASSETS.items():
        wanted = {member: rel for member, rel in files.items() if not (static / rel).is_file()}
        if not wanted:
            continue
        contents = npm.checked_files(spec, integrity, list(wanted), registry, fetch, log)
        for member, rel in wanted.items():
            npm.write_atomic(static / rel, contents[member])
            written += 1
    if missing_assets(static) == ["version.built"]:
        npm.write_atomic(static / "version.built", visdom_version().encode())
        written += 1
    return written
