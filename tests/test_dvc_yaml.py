"""dvc.yaml keeps DVC's conventions: every stage run-cacheable, code deps equal to what each stage imports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import foldwise_imports, module_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "foldwise"
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = PIPELINE["stages"]
# Modules that cannot change what a stage writes: console lines, the Visdom live view, error
# messages, progress bars. Their imports are not followed either (cli imports errors only to catch them).
PRESENTATION = {"core.cli", "core.npm", "core.progress", "live.monitors", "live.settings", "live.visdom_monitor",
                "live.server", "live.assets", "training.callbacks"}
# Modules a stage reaches only through a presentation module but whose files are its outputs.
WRITERS = {"--live": "live.dvclive_monitor"}


def code_closure(stage: str) -> set[str]:
    """Package modules (``data.prepare``) the stage's script imports, transitively, through modules that
    affect results."""
    todo, seen = list(foldwise_imports(ROOT / "stages" / f"{stage}.py")), set()
    while todo:
        name = todo.pop()
        if name in seen or name in PRESENTATION:
            continue
        seen.add(name)
        todo += foldwise_imports(module_file(name))
    for flag, module in WRITERS.items():
        if flag in STAGES[stage]["cmd"]:
            seen.add(module)
    return seen


def outputs(stage: str) -> dict[str, dict]:
    """Every output of ``stage`` (outs, metrics, plots) with its options and its kind."""
    found = {}
    for kind in ("outs", "metrics", "plots"):
        for entry in STAGES[stage].get(kind, []):
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            found[path] = {**(options or {}), "kind": kind}
    return found


@pytest.mark.parametrize("stage", list(STAGES))
def test_code_deps_are_exactly_the_modules_the_stage_imports(stage):
    declared = {".".join(Path(d).relative_to("src/foldwise").with_suffix("").parts) for d in STAGES[stage]["deps"]
                if d.startswith("src/foldwise/")}
    assert f"stages/{stage}.py" in STAGES[stage]["deps"]
    imported = code_closure(stage)
    assert declared == imported, (f"{stage}: add {sorted(imported - declared)}, "
                                  f"remove {sorted(declared - imported)} in dvc.yaml")


def test_the_closure_follows_imports_inside_functions_and_skips_presentation():
    assert {"core.params", "core.outputs", "data.download"} <= code_closure("download")  # params: in main
    assert "live.visdom_monitor" not in code_closure("crossval") and "live.dvclive_monitor" in code_closure("crossval")
    assert "core.errors" not in code_closure("report")  # only cli (presentation) imports it there
    assert "data.sources" in code_closure("crossval")  # augment imports it inside a function


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_is_run_cacheable(stage):
    """DVC restores no run of a stage with a persist output (dvc/stage/cache.py, _can_hash) or an
    uncached plain output (checked: a `cache: false` out re-runs the stage where a metric is restored)."""
    for path, options in outputs(stage).items():
        assert not options.get("persist"), f"{stage}: {path} is persist: true"
        if options.get("cache") is False:
            assert options["kind"] in ("metrics", "plots"), f"{stage}: {path} is cache: false but not a metric/plot"


def test_git_tracks_exactly_the_uncached_outputs_and_dvc_lock():
    """Committed results = the cache: false metrics and plots; everything else is in DVC's cache."""
    listed = subprocess.run(["git", "ls-files", "reports", "models", "data", "dvc.lock"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    uncached = {path for stage in STAGES for path, o in outputs(stage).items() if o.get("cache") is False}
    committed = {path for path in listed if not path.endswith((".gitignore", "README.md"))}
    assert committed == uncached | {"dvc.lock"}


def test_metric_files_are_the_top_level_ones():
    declared = {p for stage in STAGES for p, o in outputs(stage).items() if o["kind"] == "metrics"}
    assert set(PIPELINE["metrics"]) == declared


def test_no_stage_deletes_its_own_outputs():
    """DVC removes outputs before a run (and keeps them in its cache); a stage must not work around it."""
    for script in (ROOT / "stages").glob("*.py"):
        assert not re.search(r"remove_outputs|shutil\.rmtree|\.unlink\(", script.read_text()), script.name


def test_the_committed_default_run_has_at_most_20_metric_values():
    """`dvc exp show` stays readable: headline numbers only, nothing that changes run to run."""
    import json

    def leaves(data) -> int:
        return sum(leaves(v) for v in data.values()) if isinstance(data, dict) else 1

    files = {path: json.loads((ROOT / path).read_text()) for path in PIPELINE["metrics"]}
    assert sum(leaves(data) for data in files.values()) <= 20
    assert "seconds" not in json.dumps(files) and "per_class" not in json.dumps(files)
