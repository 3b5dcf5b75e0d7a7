import json

import pandas as pd
import pytest

from foldwise.core.outputs import atomic_dir, atomic_file, write_csv, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("stage died")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


def test_atomic_file_and_writers(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "m.json") as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "m.json", {"accuracy": 0.9})
    assert json.loads((tmp_path / "m.json").read_text()) == {"accuracy": 0.9}
    write_csv(tmp_path / "h.csv", pd.DataFrame({"epoch": [1, 2]}))
    assert (tmp_path / "h.csv").read_text() == "epoch\n1\n2\n"
