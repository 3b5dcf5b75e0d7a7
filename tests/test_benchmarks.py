"""The benchmark suite in its reduced mode, as CI runs it so that it cannot rot.

Timings are not asserted (they mean nothing on tiny data and a shared
machine); what is asserted is that every table is there and complete, and
that every path trains (better than chance).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from training import CONFIGS  # noqa: E402

ROW = re.compile(r"^\| (\S+) \((\d+)\) \| \(([abc])\) [\w-]+ \| ([\d.]+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| "
                 r"([\d.]+) \| (.*) \|$", re.M)


def test_quick_benchmark_writes_every_table(tmp_path):
    out = tmp_path / "results.md"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "FOLDWISE_DEVICE": "cpu"}
    subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                   check=True, timeout=1200)
    text = out.read_text()
    assert "Machine: " in text and "cores" in text
    rows = {(m[0], m[2]): m for m in ROW.findall(text)}
    assert set(rows) == {(name, path) for name in CONFIGS for path in "abc"}
    for (name, path), (_, batch, _, seconds, per_second, data, _, acc, ratio) in rows.items():
        assert int(batch) == CONFIGS[name][1]
        assert float(seconds) >= 0 and int(per_second.replace(",", "")) > 0
        # 3,048 images: 9.1 MB preloaded as float32, 2.3 MB as torchvision's uint8
        assert int(data.replace(",", "")) == (2 if path == "c" else 9)
        assert 0.1 < float(acc) <= 1.0  # 10 classes: better than chance after 2 epochs on 2,048 images
        expected = {"a": r"^$", "b": r"^b/a = \d+\.\d\d$", "c": r"^c/b = \d+\.\d\d$"}[path]
        assert re.match(expected, ratio), (name, path, ratio)
    assert re.search(r"^\| 1 \| [\d.]+ \| 0\.\d{4} \|$", text, re.M)  # time to accuracy, 1 epoch
    assert "- test accuracy 0.91: " in text
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in stages:
        assert re.search(rf"^\| {stage} \| [\d.]+ \|$", text, re.M), stage
    assert re.search(r"^\| second `dvc repro` \(nothing to do\) \| [\d.]+ \|$", text, re.M)
    assert re.search(r"Test accuracy 0\.\d{4}, macro F1 0\.\d{4}\.", text)
