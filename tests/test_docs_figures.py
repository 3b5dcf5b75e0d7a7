"""Every figure README and docs/ quote from a file is checked against that file, so a number edited by
hand, or a file regenerated without its quotes, fails here. Figures that no file holds name the command
that produced them beside them (docs/development.md, "One home per fact")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METRIC_FILES = ["reports/metrics.json", "reports/cv.json", "reports/train.json"]


def text(name: str) -> str:
    return (ROOT / name).read_text()


def one(pattern: str, name: str) -> re.Match:
    """The single match of ``pattern`` in file ``name``, its figures in the groups."""
    found = list(re.finditer(pattern, text(name), re.M | re.S))
    assert len(found) == 1, f"{name}: expected one match of {pattern!r}, found {len(found)}"
    return found[0]


def experiments_row(step: str) -> float:
    """Seconds of one step of benchmarks/experiments.md's table."""
    return float(one(rf"^\| {re.escape(step)} \| ([\d.]+) \|$", "benchmarks/experiments.md")[1])


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads(text("reports/metrics.json"))


def leaves(data) -> int:
    return sum(leaves(v) for v in data.values()) if isinstance(data, dict) else 1


def test_readme_ensemble_table_is_the_committed_metrics(metrics):
    table = one(r"^\| single final model \| ([\d.]+) \| \|\n"
                r"\| ensemble of the (\d+) fold models \| \*\*([\d.]+)\*\* \| ([\d.]+) \|\n"
                r"\| the ensemble, temperature-scaled \| ([\d.]+) \| \*\*([\d.]+)\*\* \|$", "README.md")
    single, k, ensemble, ece_before, scaled, ece = table.groups()
    assert float(single) == metrics["test"]["accuracy"]
    assert int(k) == int(one(r"^k_folds: (\d+)", "params.yaml")[1])
    assert float(ensemble) == float(scaled) == metrics["ensemble"]["accuracy"]  # scaling keeps every argmax
    assert ece_before == f"{metrics['calibration']['ece_before']:.4f}"
    assert ece == f"{metrics['calibration']['ece']:.4f}"
    gain, p = one(r"The ensemble is \+([\d.]+) points \(McNemar p = ([\d.e-]+)\)", "README.md").groups()
    assert gain == f"{100 * (metrics['ensemble']['accuracy'] - metrics['test']['accuracy']):.2f}"
    assert p == f"{metrics['ensemble']['mcnemar_p']:.2g}".replace("e-0", "e-")


def test_readme_iterating_times_are_benchmarks_experiments_md():
    back, share, first = one(r"took ([\d.]+) s, ([\d.]+)% of the ([\d.]+) s its\s+training stages took",
                             "README.md").groups()
    assert float(back) == experiments_row("back to the committed lr: every training stage restored from the "
                                          "run-cache")
    quoted = one(r"Return to a previous lr: \*\*([\d.]+)%\*\* of that lr's first run \(its training stages, "
                 r"([\d.]+) s;", "benchmarks/experiments.md")
    assert (share, first) == quoted.groups()
    minutes = int(one(r"`make run` then takes about (\d+) minutes", "README.md")[1])
    assert minutes == round(experiments_row("fresh clone, `dvc repro` in all (git status clean after it)") / 60)


def test_docs_iterating_queue_figures_are_benchmarks_queue_md():
    queued, sequential, ratio = one(r"two default experiments took ([\d,]+) s queued with two workers\s+"
                                    r"against ([\d,]+) s one after the other \(([\d.]+)x the time",
                                    "docs/iterating.md").groups()
    table = one(r"^\| two experiments queued, `dvc queue start -j 2` \(lr 0\.004, 0\.016\) \| ([\d.]+) \|$",
                "benchmarks/queue.md")
    assert int(queued.replace(",", "")) == round(float(table[1]))
    table = one(r"^\| the same two one after the other, `dvc exp run` \| ([\d.]+) ", "benchmarks/queue.md")
    assert int(sequential.replace(",", "")) == round(float(table[1]))
    measured = one(r"two workers vs one after the other: \*\*([\d.]+)x", "benchmarks/queue.md")[1]
    assert ratio == measured
    assert "byte for byte: **yes**" in text("benchmarks/queue.md")


def test_docs_iterating_counts_the_committed_metric_values():
    quoted = int(one(r"\((\d+) values\s+for the default params", "docs/iterating.md")[1])
    assert quoted == sum(leaves(json.loads(text(name))) for name in METRIC_FILES)


def test_docs_models_quotes_the_committed_cv_comparison():
    cv = json.loads(text("reports/cv.json"))["variants"]
    gain, p = one(r"l2's \+([\d.]+) points over baseline gets p = ([\d.]+)", "docs/models.md").groups()
    assert gain == f"{100 * (cv['l2']['valid_acc_mean'] - cv['baseline']['valid_acc_mean']):.2f}"
    assert p == f"{cv['l2']['p_value']:.3f}"


def test_every_benchmark_report_named_in_docs_exists():
    """A link or path to a report that was renamed or removed is a stale fact too."""
    named = {m for doc in ["README.md", "params.yaml", *sorted(p.relative_to(ROOT).as_posix()
                                                               for p in (ROOT / "docs").glob("*.md"))]
             for m in re.findall(r"benchmarks/[\w./-]+\.(?:md|py)", text(doc))}
    assert named and [n for n in sorted(named) if not (ROOT / n).is_file()] == []


def frontier_rows() -> dict[str, list[str]]:
    """benchmarks/frontier.md's table: each recipe's cells (seconds, ratio, crossval s, train s, single,
    single + flips, ensemble, ensemble + flips)."""
    rows = re.findall(r"^\| ([^|]+?) \| ([\d.]+) \| (.*) \|$", text("benchmarks/frontier.md"), re.M)
    return {name: [seconds, *(c.strip() for c in rest.split("|"))] for name, seconds, rest in rows}


def test_docs_quote_the_frontier_as_benchmarks_frontier_md_measured_it():
    rows = frontier_rows()
    today = rows["today's default (2 threads, one run at a time)"]
    side = rows["today's recipe, runs side by side (threads 1)"]
    quoted = one(r"crossval took ([\d.]+) s side by side against ([\d.]+) s one at a time\s+at 2 threads\. A single "
                 r"run loses, though: the final training took ([\d.]+) s at 1\s+thread against ([\d.]+) s at 2",
                 "docs/scaling.md").groups()
    assert quoted == (side[2], today[2], side[3], today[3])
    fp32 = rows["LeNet [16, 64], tricks, 11 epochs, 4 folds"]
    bf16 = rows["LeNet [16, 64], tricks, 11 epochs, 4 folds, bfloat16"]
    quoted = one(r"crossval took ([\d.]+) s in\s+bfloat16 against ([\d.]+) s in float32", "docs/models.md").groups()
    assert quoted == (bf16[2], fp32[2])
    quoted = one(r"In float32, 11 epochs on 4 folds took ([\d.]+)x the default's time \(single model\s+with test-time "
                 r"flips ([\d.]+), fold ensemble ([\d.]+)\)\. In bfloat16, .*? the same recipe took ([\d.]+)x the "
                 r"default's time: single\s+([\d.]+), with flips ([\d.]+), ensemble ([\d.]+)\.",
                 "docs/models.md").groups()
    assert quoted == (fp32[1], fp32[5], fp32[6], bf16[1], bf16[4], bf16[5], bf16[6])
    best = one(r"within today's default's time \(ratio <= 1\.00\): \*\*(.+?)\*\*", "benchmarks/frontier.md")[1]
    assert best == "LeNet [16, 64], tricks, 11 epochs, 4 folds, bfloat16"  # the recipe docs/models.md gives


def test_docs_quote_bfloat16s_speed_as_benchmarks_precision_md_measured_it():
    """docs/models.md's ratios for the [16, 64] LeNet, one per instruction set, are precision.md's."""
    rows = dict(re.findall(r"^\| (\w+): [^|]+ \| [^|]+ \| (?:yes|no) \| LeNet \[16, 64\] \| [\d,]+ \| [\d,]+ \| "
                           r"([\d.]+)x \|$", text("benchmarks/precision.md"), re.M))
    sentence = (r"bf16 ran at ([\d.]+)x fp32's images per second with AMX, ([\d.]+)x with bfloat16 instructions "
                r"but no AMX \(as on AMD EPYC Zen 4\), ([\d.]+)x with AVX-512 alone and ([\d.]+)x with AVX2 alone")
    quoted = one(sentence.replace(" ", r"\s+"), "docs/models.md").groups()  # any line breaks
    assert quoted == (rows["native"], rows["AVX512_CORE_BF16"], rows["AVX512_CORE"], rows["AVX2"])
    fp32 = frontier_rows()["LeNet [16, 64], tricks, 11 epochs, 4 folds"]
    assert one(r"which already took ([\d.]+)x\s+the default's time", "docs/models.md")[1] == fp32[1]
