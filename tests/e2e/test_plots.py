"""End to end: the committed digits run (lr 0.008) and a `dvc exp run` with another lr, compared with
`dvc plots diff` in real headless Chromium with no network, and with `dvc metrics diff`."""

from __future__ import annotations

import re
import shutil

import pytest

from foldwise.reporting.plot_data import MAX_PREDICTION_ROWS
from tests.e2e.conftest import copy_project
from tests.e2e.test_live import ARTIFACTS, CHROMIUM_FLAGS, colour_pixels, net, screenshot  # noqa: F401
from tests.e2e.test_pipeline import run

DVC_REV_COLOURS = [(0x94, 0x5D, 0xD6), (0x13, 0xAD, 0xC7)]  # dvc-render's first two revision colours
VEGA_REV_COLOURS = [(0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18)]  # Vega's category10: our templates' revisions


@pytest.fixture(scope="module")
def repo(digits_reference, tmp_path_factory):
    repo = copy_project(digits_reference, tmp_path_factory.mktemp("project"))
    run(repo, "dvc", "exp", "run", "-n", "lr-fast", "-S", "lr=0.02")  # the other revision: HEAD's lr 0.008
    return repo


def test_plots_diff_of_two_experiments_renders_offline(net, repo, tmp_path):
    run(repo, "dvc", "plots", "diff", "HEAD", "lr-fast", "-o", "diff-html")
    page = repo / "diff-html" / "index.html"
    html = page.read_text()
    assert "<script src=" not in html  # everything inline: nothing to fetch
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium not found: run `make test` (installs Debian's chromium)"
    dom = net.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'dom'}", "--virtual-time-budget=20000",
                   "--dump-dom", f"file://{page}"]).stdout
    live = len(list((repo / "reports/live").rglob("*.tsv")))  # dvclive's curves: one plot each
    # every data plot drawn, none failed: the 8 foldwise plots and dvclive's curves
    assert dom.count('class="marks"') == html.count("vegaEmbed(") >= 8 + live, dom[-2000:]
    assert dom.count("HEAD_reports_figures_") == dom.count("lr-fast_reports_figures_") == 6  # both runs' PNGs
    shot = screenshot(net, f"file://{page}", ARTIFACTS / "plots-diff.png", tmp_path, size="1500,7000")
    print(f"screenshot: {ARTIFACTS / 'plots-diff.png'}")
    for colour in DVC_REV_COLOURS + VEGA_REV_COLOURS:  # both revisions' marks are on screen
        assert colour_pixels(shot, colour) > 150, colour


def test_metrics_diff_of_the_two_experiments_is_a_readable_table(repo):
    out = run(repo, "dvc", "metrics", "diff", "HEAD", "lr-fast").stdout
    lines = out.splitlines()
    assert re.match(r"Path\s+Metric\s+HEAD\s+lr-fast\s+Change$", lines[0]), out
    row = next(line for line in lines if re.search(r"reports/metrics\.json\s+test\.accuracy\s", line))
    slow, fast, change = map(float, row.split()[2:5])
    assert 0 < slow <= 1 and 0 < fast <= 1 and change == pytest.approx(fast - slow, abs=2e-4)
    assert "reason" not in out and "{" not in out  # numbers only, one per cell


def test_plot_files_stay_small(repo):
    for path in [*(repo / "reports").glob("*.json"), *(repo / "reports/curves").glob("*.csv"),
                 *(repo / "reports/evaluate").glob("*.csv"), repo / "reports/report.md"]:
        assert path.stat().st_size < 100_000, path
    rows = (repo / "reports/evaluate/predictions.csv").read_text().count("\n") - 1
    assert 0 < rows <= MAX_PREDICTION_ROWS
