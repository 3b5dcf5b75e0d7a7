"""The benchmark suite in its reduced mode, as CI runs it so that it cannot rot.

Timings are not asserted (they mean nothing on tiny data and a shared
machine); what is asserted is that every table is there and complete, and
that every path trains (better than chance).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import dvc_env, no_op_repro  # noqa: E402
from training import CONFIGS, PathResult, PeakMemory, _Interleave  # noqa: E402

ROW = re.compile(r"^\| (\S+) \((\d+)\) \| \(([abc])\) [\w-]+ \| ([\d.]+) \| ([\d.]+)-([\d.]+) \| ([\d,]+) \| "
                 r"([\d,]+) \| ([\d,]+) \| ([\d.]+) \| (.*) \|$", re.M)


def test_quick_benchmark_writes_every_table(tmp_path):
    out = tmp_path / "results.md"
    env = {**dvc_env(), "FOLDWISE_DEVICE": "cpu"}
    subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                   check=True, timeout=1200)
    text = out.read_text()
    assert "Machine: " in text and "cores" in text
    assert re.search(r"from that one run \(\d+ minutes on this machine\)", text)  # its own time, measured
    rows = {(m[0], m[2]): m for m in ROW.findall(text)}
    assert set(rows) == {(name, path) for name in CONFIGS for path in "abc"}
    for (name, path), (_, batch, _, seconds, fastest, slowest, per_second, data, _, acc, ratio) in rows.items():
        assert int(batch) == CONFIGS[name][1]
        assert float(fastest) <= float(seconds) <= float(slowest) and int(per_second.replace(",", "")) > 0
        # 3,048 images: 9.1 MB preloaded as float32, 2.3 MB as torchvision's uint8
        assert int(data.replace(",", "")) == (2 if path == "c" else 9)
        assert 0.1 < float(acc) <= 1.0  # 10 classes: better than chance after 2 epochs on 2,048 images
        expected = {"a": r"^$", "b": r"^b/a = \d+\.\d\d$", "c": r"^c/b = \d+\.\d\d$"}[path]
        assert re.match(expected, ratio), (name, path, ratio)
    assert re.search(r"^\| 1 \| [\d.]+ \| 0\.\d{4} \|$", text, re.M)  # time to accuracy, 1 epoch
    assert "- test accuracy 0.91: " in text
    # the pipeline's data stages, from a fresh clone (every stage is run by tests/e2e/)
    rows = re.findall(r"^\| (\w+) \| [\d.]+ \|$", text, re.M)
    assert rows == ["download", "prepare", "normalize"], rows
    assert re.search(r"^\| `dvc repro normalize` again, nothing to do: right after \| [\d.]+ \|$", text, re.M)
    median, fastest, slowest = map(float, re.search(
        r"^\| the same, median of the next 3 \| ([\d.]+) \(([\d.]+)-([\d.]+)\) \|$", text, re.M).groups())
    assert fastest <= median <= slowest
    assert "Only `dvc repro normalize` ran: no results of its own." in text
    # this machine against the reference figures (0.97 and 1.8 s per 60,000-image epoch)
    speed = {int(b): (float(ref), float(here), float(r))
             for b, ref, here, r in re.findall(r"^\| batch (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)}
    assert set(speed) == {256, 64} and speed[256][0] == 0.97 and speed[64][0] == 1.8
    for ref, here, r in speed.values():
        assert here > 0 and abs(r - here / ref) < 0.01
    factor = float(re.search(r"^\| \*\*factor\*\* \(geometric mean\) \| \| \| \*\*([\d.]+)\*\* \|$", text, re.M)[1])
    assert abs(factor - (speed[256][2] * speed[64][2]) ** 0.5) < 0.01
    # every target of the issue, judged, with an estimate for each time
    targets = re.findall(r"^\| (.+?) \| (.+?) \| (yes|\*\*no\*\*) \| (.*?) \|$", text, re.M)
    assert [t[0] for t in targets] == ["b/a <= 1.10 for every model", "c/b >= 4, MLP at batch 64",
                                       "default CNN at 0.91 test accuracy <= 30 s", "full `dvc repro` <= 300 s",
                                       "no-op `dvc repro` <= 3 s, right after",
                                       "no-op `dvc repro` <= 3 s, median of the next 3"]
    assert float(targets[-1][1].removesuffix(" s")) == median
    for noop in targets[-2:]:
        measured, estimate = float(noop[1].removesuffix(" s")), float(noop[3].removesuffix(" s"))
        assert noop[2] == ("yes" if measured <= 3 else "**no**")
        assert abs(estimate * factor - measured) <= 0.051 * (1 + factor)  # measured / factor, both to 0.1 s


def test_rounds_alternate_which_path_runs_right_before_foldwise():
    ran = []
    others = {"hand": lambda: ran.append("a"), "textbook": lambda: ran.append("c")}
    interleave = _Interleave(others, PathResult(), epochs=4, memory=PeakMemory(torch.device("cpu")))
    for _ in range(4):
        interleave.run_others()
    assert ran == ["a", "c", "c", "a", "a", "c", "c", "a"]


def test_no_op_timing_refuses_a_repro_that_runs_a_stage(tmp_path):
    """A no-op `dvc repro` that re-runs a stage would be timed as if it were one; the suite stops instead."""
    env = dvc_env()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True)
    settled = {"cmd": "echo 1 > settled.txt", "outs": ["settled.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"settled": settled}}))
    subprocess.run(["dvc", "repro", "-q"], cwd=tmp_path, env=env, check=True)
    assert no_op_repro(tmp_path, env) > 0  # nothing to do: timed
    restless = {"cmd": "echo 1 > restless.txt", "outs": ["restless.txt"], "always_changed": True}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"settled": settled, "restless": restless}}))
    subprocess.run(["dvc", "repro", "-q"], cwd=tmp_path, env=env, check=True)
    with pytest.raises(SystemExit, match=r"re-ran \['restless'\]"):
        no_op_repro(tmp_path, env)


def test_quick_experiments_benchmark_checks_reuse_and_writes_its_table(tmp_path):
    """benchmarks/experiments.py --quick on digits: its check (clean git after the fresh clone's repro)
    passes or it exits non-zero, and its table is written with every stage's time."""
    out = tmp_path / "experiments.md"
    env = {**dvc_env(), "FOLDWISE_DEVICE": "cpu"}
    subprocess.run([sys.executable, "benchmarks/experiments.py", "--quick", "--out", str(out)], cwd=ROOT,
                   env=env, check=True, timeout=1200)
    text = out.read_text()
    assert re.search(r"^Machine: .+, \d+ cores, .+; device cpu; torch ", text, re.M)  # figures say where they are from
    stages = re.findall(r"^\| fresh clone, `dvc repro`: (\w+) \| [\d.]+ \|$", text, re.M)
    assert stages == ["download", "prepare", "normalize"], stages  # --quick: the data stages
    assert "- `--quick`: the fresh clone's repro of the data stages only" in text
    leaves = int(re.search(r"`dvc exp show --json`: (\d+) metric values", text).group(1))
    assert 0 < leaves <= 20


def test_quick_frontier_benchmark_writes_its_table_and_plot(tmp_path):
    """benchmarks/frontier.py --quick: each row a real `dvc exp run` in a fresh clone (digits, 1 epoch)."""
    from frontier import QUICK_ROWS

    out = tmp_path / "frontier.md"
    subprocess.run([sys.executable, "benchmarks/frontier.py", "--quick", "--out", str(out)], cwd=ROOT,
                   env={**dvc_env(), "FOLDWISE_DEVICE": "cpu"}, check=True, timeout=900, capture_output=True)
    text = out.read_text()
    rows = re.findall(r"^\| (.+?) \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \| [\d.]+ \| ([\d.]+) \| ([\d.]*) \| "
                      r"([\d.]+) \| ([\d.]*) \|$", text, re.M)
    assert [r[0] for r in rows] == [name for name, _ in QUICK_ROWS]
    assert float(rows[0][2]) == 1.0 and all(float(r[2]) > 0 for r in rows)  # ratios to the first row
    for name, seconds, ratio, single, single_tta, ensemble, ensemble_tta in rows:
        assert abs(float(ratio) - float(seconds) / float(rows[0][1])) < 0.01
        assert 0 < float(single) <= 1 and 0 < float(ensemble) <= 1
        assert bool(single_tta) == bool(ensemble_tta) == ("tta" in dict(QUICK_ROWS)[name] and
                                                           dict(QUICK_ROWS)[name]["tta"] is True)
    assert re.search(r"^Best ensemble accuracy within today's default's time \(ratio <= 1\.00\): \*\*.+\*\*: "
                     r"single 0\.\d{4}, ensemble 0\.\d{4}, [\d.]+x the time\.$", text, re.M)
    assert "![The frontier](frontier.png)" in text
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_precision_benchmark_shows_bfloat16_losing_where_the_cpu_lacks_its_instructions(tmp_path):
    """benchmarks/precision.py, reduced: with oneDNN capped to AVX2, torch keeps bfloat16 convolutions from
    oneDNN and bf16 trains several times slower than fp32 (docs/models.md's reason for the fp32 default);
    uncapped on a CPU with AMX, bf16 is the faster one."""
    out = tmp_path / "precision.md"
    subprocess.run([sys.executable, "benchmarks/precision.py", "--seconds", "0.3", "--rounds", "1", "--images", "1024",
                    "--models", "default", "--isas", "native,AVX2", "--out", str(out)], cwd=ROOT, check=True,
                   timeout=300, capture_output=True)
    rows = re.findall(r"^\| (\w+): [^|]+ \| ([^|]+) \| (yes|no) \| LeNet \[8, 32\] [^|]+ \| ([\d,]+) \| ([\d,]+) \| "
                      r"([\d.]+)x \|$", out.read_text(), re.M)
    assert [r[0] for r in rows] == ["native", "AVX2"]
    capped = rows[1]
    assert capped[1] == "Intel AVX2" and capped[2] == "no" and float(capped[5]) < 0.5
    for _, _, _, fp32, bf16, ratio in rows:
        assert abs(float(ratio) - int(bf16.replace(",", "")) / int(fp32.replace(",", ""))) < 0.01
    if "amx_bf16" in Path("/proc/cpuinfo").read_text():
        assert rows[0][2] == "yes" and float(rows[0][5]) > 1.2
