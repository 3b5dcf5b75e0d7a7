"""An HTML template for ``dvc plots show/diff`` that renders with no network.

dvc-render's default page loads vega, vega-lite and vega-embed from a CDN
through its ``{scripts}`` placeholder. This template leaves that placeholder
out and inlines pinned copies of the same three libraries, installed from
the npm registry by the set-up. ``.dvc/config`` points ``plots.html_template``
at it, so the plain commands need no flag.
"""

from __future__ import annotations

from pathlib import Path

from foldwise.core import npm

TEMPLATE = Path(".foldwise/plots/offline.html")  # relative to the project root; .dvc/config says ../ + this
# The versions dvc-render's own page asks the CDN for (dvc_render/vega.py).
VEGA = {
    "vega@5.20.2": ("qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
                    "package/build/vega.min.js"),
    "vega-lite@5.2.0": ("Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
                        "package/build/vega-lite.min.js"),
    "vega-embed@6.18.2": ("wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
                          "package/build/vega-embed.min.js"),
}
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- vega, vega-lite and vega-embed, inlined by foldwise (src/foldwise/reporting/plots_html.py)
         so the page needs no network -->
    %s
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def write_template(path: Path = TEMPLATE, registry: str | None = None, fetch=npm.fetch, log=print) -> None:
    """Write the offline template (the Makefile decides when). Checks every tarball before writing."""
    scripts = []
    for spec, (integrity, member) in VEGA.items():
        code = npm.checked_files(spec, integrity, [member], registry, fetch, log)[member].decode("utf-8")
        # "</script" inside the code would end the tag early; "{plot_divs}" would be replaced by DVC
        code = code.replace("</script", "<\\/script").replace("{plot_divs}", "{plot_\\u0064ivs}")
        scripts.append(f"<script>/* {spec} */\n{code}\n</script>")
    npm.write_atomic(Path(path), (PAGE % "\n    ".join(scripts)).encode("utf-8"))


if __name__ == "__main__":  # the set-up: `python -m foldwise.reporting.plots_html`
    import sys

    try:
        write_template()
        print(f"dvc plots template: {TEMPLATE} written")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
