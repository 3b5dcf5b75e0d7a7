"""Mutation testing of the modules that decide results, with mutmut, and its score per module.

mutmut (configured in pyproject.toml, ``[tool.mutmut]``, which lists the modules: every one that
decides results) changes one thing at a time (an operator, a constant, an argument) and runs the
unit tests that reach that function: a mutant no test notices is a behaviour nothing pins. Not in
CI (``make audit``): it takes about three hours on 2 cores (the run time is in its report): engine.py's mutants alone
run every test that trains, the DDP and Ray ones included.

    make mutation                                       # install mutmut, run it afresh, write benchmarks/mutation.md
    .venv/bin/python -m benchmarks.mutation --resume    # continue an interrupted run
    .venv/bin/python -m benchmarks.mutation --survivors # after adding tests: re-test what the last run left alive
    .venv/bin/python -m benchmarks.mutation --outside   # then: tests that start torchrun, against what is left
    .venv/bin/python -m benchmarks.mutation --report    # only summarise the last run
    .venv/bin/mutmut show <mutant>                      # the diff of one mutant

A plain run starts from an empty ``mutants/``: mutmut re-tests a mutant when its function changes,
but not when a test is added, so a survivor killed by a new test would still read as alive;
``--survivors`` names them to mutmut, which then re-tests them.
Lines whose every mutant is equivalent (CUDA-only code, memory layout, PNG compression level)
carry ``# pragma: no mutate`` and the reason; single equivalent mutants are in ``EQUIVALENT``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "mutation.md"
MUTANTS = ROOT / "mutants" / "src" / "foldwise"
TIMES = ROOT / "mutants" / "run-seconds.json"  # how long the last run took: {"full": s, "survivors": s}
# Code that runs only in processes a test starts (torchrun's ranks, Ray's workers, which import the package
# from PYTHONPATH, not mutmut's mutants/): mutmut picks a mutant's tests by what ran in the test's own
# process, and those processes run the code unmutated. ``--outside``
# applies each mutant of these modules left alive to a scratch copy of the project (``mutmut apply``)
# and runs the tests named here there: one that fails kills it. Verdicts in OUTSIDE_RESULTS.
OUTSIDE: dict[str, list[str]] = {
    "training/final.py": ["tests/training/test_ddp.py"],
    # fit's DDP branches: the two-process equivalence first (13 s), then the train stage under torchrun
    "training/engine.py": ["tests/training/test_ddp.py::test_two_ddp_processes_train_exactly_what_one_process_trains",
                           "tests/training/test_ddp.py::test_two_gloo_processes_train_the_same_twice_and_only_rank_0_writes"],
    # what runs inside Ray's workers (train_task, _placement): they import the package from PYTHONPATH
    "training/fanout.py": ["tests/training/test_fanout.py::test_each_run_holds_the_cpus_it_asks_for",
                           "tests/training/test_fanout.py::test_ray_crossval_gives_the_sequential_tables_bit_for_bit"],
}
OUTSIDE_RESULTS = ROOT / "mutants" / "outside.json"
# mutmut's statuses (mutmut.stats.status_by_exit_code), plus ours for the equivalent ones
KILLED, SURVIVED, NO_TESTS, TIMEOUT, EQUIV = "killed", "survived", "no tests", "timeout", "equivalent"


# Mutants that no behaviour can tell apart from the code, matched by module (a regex of its path in the
# package) and by the text of the changed line (stable when mutmut renumbers its mutants), each with the
# reason. Where every mutant of a line is of this kind the line carries ``# pragma: no mutate`` instead.
EQUIVALENT: dict[tuple[str, str], str] = {
    ("training/crossval.py", r'"(XXsecondsXX|SECONDS)": time\.perf_counter\(\)|time\.perf_counter\(\) \+ started'):
        "the seconds saved with a checkpoint only feed the console's run time, never an output",
    ("training/resume.py", r"newest <= cutoff"): "modification times equal to the cutoff to the nanosecond",
    ("training/resume.py", r"shutil\.rmtree\(other, (ignore_errors=(None|False))?\)"):
        "a stale key deleted by another process in the same instant: a race no test can time",
    ("training/augment.py", r"torch\.randint\(2 \* pad \+ 1, "): "torch.randint(high, size) draws from 0 to high, as (0, high)",
    ("training/augment.py", r"torch\.arange\([a-z], (device=None)?\)"):
        "device placement: on a CPU-only machine None is the same device (a GPU run would tell)",
    ("data/normalize.py", r"chunk: int = \d+"): "sums are exact integers: the chunk size never changes the result (tested)",
    ("data/prepare.py", r"carve_split\(train\.labels\[pool\], valid_size, seed, \)"): "the key's default is the value passed",
    ("data/prepare.py", r"to_csv\(.*index=None\)"): "pandas reads index=None as False",
    ("data/prepare.py", r"pd\.Series\(\[r for _, r in skipped\], (dtype=None)?\)"):
        "the reasons are strings: the dtype only matters for an empty list, whose counts are empty either way",
    ("training/resume.py", r'\{"(XXdeviceXX|DEVICE)": device\}'): "any name for the device entry hashes it all the same",
    ("training/resume.py", r"^\+\s+return$"): "return instead of break as the loop's last statement",
    ("reporting/metrics.py", r"zero_division=0\)|labels=labels, \)|average=\"macro\", \)"):
        "scikit-learn's default zero_division ('warn') also gives 0, with a warning",
    ("data/prepare.py", r"progress\((files\.names|idx), (desc=|unit=|\))"):
        "the progress bar's label and unit: what the console shows while it decodes, never an output",
    ("data/prepare.py", r"channels or 4, size"): "decode converts every channel count but 1 to RGB (images.convert)",
    ("training/engine.py", r'os\.environ\.get\(DEVICE_ENV, "AUTO"\)'): "the value is lower-cased before it is compared",
    (r"training/engine\.py|data/(normalize|batches)\.py", r'\.to\(None\b|\.to\((non_blocking|copy)=|stats_tensors\(stats, None\)|"rng"\], None\)|'
                  r"(data_loss_sum|correct) = torch\.zeros\(\(\), (device=None|dtype=torch\.int64\)|\))"):
        "device placement: on a CPU-only machine None is the same device (a GPU run would tell)",
    ("data/normalize.py", r'non_blocking=images\.device\.type (!= "cpu"|== "(XXcpuXX|CPU)")|images\.to\(mean\.device, \)'):
        "non_blocking only changes whether a pinned host-to-GPU copy makes the host wait, never a value",
    ("data/normalize.py", r"std = .*\.view\(-1, 1, 1\)"):
        "a C x 1 x 1 std broadcasts over N x C x H x W as 1 x C x 1 x 1 does (the channel check reads the mean)",
    ("training/engine.py", r"correct = torch\.zeros\(\(\), device=device, (dtype=None)?\)"):
        "a float32 count is exact up to 2**24 correct images per epoch: no test can afford more",
    ("training/engine.py", r"^\+\s+dtype = None$|torch\.autocast\(device\.type, (dtype=None, )?enabled="):
        "autocast is off on a CPU (autocast_dtype is None there): CUDA only",
    ("training/engine.py", r"^\+\s+nhwc = None$"): "memory layout: speed, not results",
    ("training/engine.py", r"^\+\s+if group\.world >= 1:$"):
        "one process's shard of the validation set is all of it (Group.shard): the same images, the same order",
    ("training/engine.py", r"Augmenter\(p, seed - RANK_SEED_STEP \* group\.rank\)"):
        "the per-rank seed only has to differ between ranks (each its own crops): minus does as plus",
    ("training/engine.py", r'_set_rng_state\(mine\("rng"\), None\)'):
        "device placement: on a CPU-only machine None is the same device (a GPU run would tell)",
    ("training/engine.py", r"if n > 2 and 0 < rest < 2 \* group\.world:"):
        "differs only for a 2-image training set: one process keeps both either way (the remainder is 0 or 2); "
        "N processes on 2 images have no slice of 2 to train either way",
    ("training/crossval.py", r"while reported <= len\(runs\) and reported in results:"):
        "the runs' indices are 0 to len(runs) - 1: len(runs) is never in results, so the loop stops there either way",
    ("training/optim.py", r'device\.type in \("cpu", "(XXcudaXX|CUDA)"\)'):
        "fused kernels on a CUDA device: on a CPU-only machine no parameter is there (a GPU run would tell)",
    ("training/optim.py", r"max\(2, total - warmup\)"):
        "differs only when one step follows the warm-up, and then only at the step after the last: no batch uses it",
    ("training/optim.py", r"^\+\s+optimizer, factor=p\.gamma, patience=p\.plateau_patience\)"):
        "ReduceLROnPlateau's mode defaults to 'min'",
    ("training/optim.py", r"self\.steps <= self\.warmup:"):
        "one more LambdaLR step after the warm-up sets the factor min(1, ...) = 1 again: the same lr",
    ("training/engine.py", r"if \(p\.l1 > 0\) or True|if p\.l1 >= 0"):
        "adding 0 x the L1 penalty changes neither the loss nor a gradient, only the speed",
    ("reporting/significance.py", r"if n == 1:"):
        "n = 1 gives p = 1 by the formula too (2 x 1 / 2 = 1): returning 1 early then only skips the sum",
    ("training/model_files.py", r'get\("sha256", (None|"XXXX")?\)'):
        "a record without a sha256 fails the 64-character check whatever the default is (tested)",
    (r"training/model_files\.py", r"map_location=None|torch\.load\(io\.BytesIO\(data\), weights_only=True\)|model\.to\(None\)|"
                                       r"load_checkpoint\(path, None,"):
        "device placement: on a CPU-only machine None is the same device (a GPU run would tell)",
    (r"training/model_files\.py|inference/predictor\.py",
     r"torch\.load\(.*weights_only=None|torch\.load\(io\.BytesIO\(data\), map_location=\"cpu\", \)"):
        "torch 2.6 and later default to weights_only=True (the file that would run code is refused either way: tested)",
    ("data/batches.py", r'pin_memory=(None|self\.device\.type (!= "cuda"|== "(XXcudaXX|CUDA)"))|labels\.to\(self\.device, '
                        r'(non_blocking=False)?\)|to_inputs\((images, self\.stats|decode_all\(files\), stats), None\)'):
        "pinned memory and non_blocking copies only change how a CUDA copy waits; None is the CPU here",
    ("data/batches.py", r"^\+\s+(pin_memory=self\.device\.type == \"cuda\",|num_workers=self\.workers, generator=)"):
        "the workers only decode PNGs (nothing random, tested on 0 and 2), and pinning is CUDA only",
    ("data/batches.py", r"manual_seed\(1\)\)"):
        "the private generator only seeds the workers, which draw nothing; what matters is that it is not "
        "torch's global one (tested)",
    ("reporting/calibration.py", r"labels\.to\(None\)"):
        "device placement: on a CPU-only machine None is the same device (a GPU run would tell)",
    ("reporting/calibration.py", r"log_t = torch\.zeros\(1, (dtype=None, )?requires_grad=True\)"):
        "LBFGS stops at a loss change of 1e-12, where T is known to about 1e-7 relative in float64 too; a "
        "float32 log T moves it by as much (measured: 2.5e-7 vs 3.5e-7 from the optimum), below the 6 places kept",
    ("reporting/calibration.py", r"log_softmax\(log_probs\.double\(\) / temperature, (dim=None)?\)"):
        "for a 2-D input torch's implicit softmax dimension is 1",
    ("reporting/calibration.py", r"LBFGS\(\[log_t\], |^\+\s+(tolerance_change=1e-12, )?(line_search_fn=\S+)?\)?$"):
        "LBFGS's settings: measured on 500 random logits, each of these gives the same T bit for bit (3e-7 from "
        "Newton's optimum), but lr 2, which lands 1e-9 from it: T moves in its 7th digit, which the 6 decimals "
        "kept show only when it tips the last rounding",
    ("reporting/calibration.py", r'table\["count"\] >= 0\]'):
        "an empty bin weighs 0 and its NaN gap is skipped by pandas' sum: the same ECE",
    ("data/prepare.py", r"files\.tree\.files\.get\(name, (None|1)?\) > MAX_FILE_BYTES"):
        "every name prepare reads is one the listing holds: the default is never read",
    ("training/resume.py", r"shutil\.rmtree\(self\.dir, (ignore_errors=(None|False))?\)"):
        "this run's key deleted by another process in the same instant: a race no test can time",
    ("training/resume.py", r"if \(self\._own_root\) or True else"):
        "a checkpoint root foldwise did not make has no marker, and the loop stops at the first unmarked folder",
    ("training/ddp.py", r'os\.environ\.get\("WORLD_SIZE", (None|"XX1XX")?\)'):
        "launched() means WORLD_SIZE is set: the default is never read",
    ("training/ddp.py", r'^\+\s+(local = |if local > |raise UserError\(None\)|device = (None|torch\.device\()|'
                        r'torch\.cuda\.set_device\()|"(XXncclXX|NCCL)" if device\.type == "cuda"|'
                        r'device\.type == "(XXcudaXX|CUDA)"|init_process_group\(None\)|'
                        r'\(device\.type == "cuda"\) and False'):
        "join's CUDA branch (one GPU per process, NCCL): on a CPU-only machine no test reaches it",
    ("training/ddp.py", r'else "GLOO"\)'): "torch reads backend names in any case",
    ("training/ddp.py", r"file=sys\.stderr, (flush=(None|False))?\)"):
        "flush changes when the line reaches the console, not what it says",
    ("training/fanout.py", r"value = -2\.0"): "any negative value is refused alike",
    ("training/fanout.py", r"value >= 1 and value != int\(value\)"): "1 is a whole number: refused by neither",
    ("training/fanout.py", r'_number\(environ, GPUS_ENV, (None|"XXXX"), '):
        "the default is never read: the GPU setting is parsed only when the variable is set",
    ("training/ensemble.py", r"members: list\[nn\.Module\], flip: bool = True\)"):
        "the default is never read: log_probabilities always passes flip",
    ("training/ensemble.py", r"softmax\(.*, (dim=None)?\)"): "for a 2-D input torch's implicit softmax dimension is 1",
    ("training/ensemble.py", r'fold_note: str = "XXXX"\)'):
        "evaluate always passes the note; the default only fills the reason of a run without fold models",
    ("training/ensemble.py", r"better = gain >= 0 and"):
        "equal accuracies mean as many images right only for one as only for the other: McNemar's p is 1",
    ("training/engine.py", r"set_to_none=(None|False)"):
        "every trainable parameter gets a gradient at every step, so zeroed and unset gradients step alike",
    (r"training/model_files\.py|inference/predictor\.py",
     r'dataclasses\.replace\(p, pretrained=(None|False), (pretrained_path=(None|""|"XXXX"))?\)'):
        "with pretrained off (None is as false), build_model never reads pretrained_path",
    ("training/crossval.py", r'v\.detach\(\)\.to\(((None, )?copy=True|"cpu", (copy=False)?)\)'):
        "device placement on a CPU-only machine; and the run's model is dropped once its weights are taken, "
        "so nothing writes the tensors a view would share",
    ("training/fanout.py", r"have\.get\('CPU', (None|1)?\):g\} CPUs"):
        "every Ray cluster reports its CPUs: the default for a missing entry is never used",
    ("training/fanout.py", r'ray\.init\(address="local", (include_dashboard=(None|True), )?\*\*self\.init_kwargs\)|'
                           r'if s\.address == "(XXlocalXX|LOCAL)":'):
        "Ray is installed without its dashboard (the [default] extra): include_dashboard starts nothing either way",
    ("training/final.py", r"torch\.manual_seed\(p\.seed - RANK_SEED_STEP \* group\.rank\)"):
        "the per-rank seed only has to differ between ranks (each its own dropout masks): minus does as plus",
    ("training/final.py", r"build_model\(train\.shape, num_classes, vp\)\.to\(None\)"):
        "device placement: on a CPU-only machine None is the same device (a GPU run would tell)",
    ("training/fanout.py", r"folds\[spec\.fold\], (None|resume\.get\(None\)),|saved=None\)$|"
                           r"train_run\(data, num_classes, p, spec, writable, \)"):
        "resuming a run only saves time: its results are bit for bit those of a fresh run (tested), and the "
        "driver reports the resumed epochs from its own checkpoints either way",
    ("training/fanout.py", r"ray\.wait\(list\(futures\), \)"): "ray.wait returns one ready future by default",
    ("training/fanout.py", r'get_assigned_resources\(\)\.get\("CPU", (None|1\.0)?\)'):
        "a task always holds CPUs (FOLDWISE_RAY_CPUS=0 is refused): the default for a missing entry is never read",
    ("training/fanout.py", r'^\+\s+self\._ray: Any = ""$'):
        "__enter__ sets it before any use; used without __enter__, None and '' fail alike (AttributeError)",
    ("training/fanout.py", r"self\.__exit__\(None, None,? ?\)"): "__exit__(*exc) ignores its arguments",
    ("training/fanout.py", r"^\+\s+self\._started = (None|True)$"):
        "_started is read only by __exit__'s `if self._started:`, where None is as false as False; and __exit__ "
        "runs once per __enter__ (a with block): what it leaves there is never read again",
    ("training/fanout.py", r"ray\.cancel\(future, (force=(None|False))?\)"):
        "a cancelled run stops either way: without force Ray raises KeyboardInterrupt in the task's Python "
        "loop, with force it kills the worker; the stage has already failed or stopped",
    ("training/fanout.py", r"ray\.init\(address=s\.address, \)"):
        "init_kwargs are for the tests' local Ray; a stage joining a cluster has none (Ray refuses num_cpus there)",
    ("training/fanout.py", r"^\+\s+self\.gpus = (None|1\.0)$"): "__enter__ sets the GPUs per run before any use",
    ("training/fanout.py", r"device = choose_device\(\) if (\(gpus > 0\) (and False|or True)|gpus >= 0|gpus > 1) else|"
                           r"split\.to_source\(None\)"):
        "device placement: on a CPU-only machine choose_device() and None give the CPU (a GPU run would tell)",
    ("training/fanout.py", r"cause = exc\.cause if \(isinstance\(getattr\(exc, \"cause\", None\), BaseException\)\) or True"):
        "a RayTaskError always carries the task's exception as its cause",
    ("data/batches.py", r"os\.environ\.get\(WORKERS_ENV, (None)?\)"):
        "an unset variable read as None instead of '': both are false, so the CPU count decides",
    ("reporting/calibration.py", r"torch\.bucketize\(confidence\.cpu\(\), edges\[1:-1\], \)"):
        "torch.bucketize's right defaults to False, the value given",
    ("training/model_files.py", r'def x__restore__mutmut_orig\(path: str \| Path, stage: str = "(XXtrainXX|TRAIN)"\)'):
        "every caller of _restore names the stage: the default is never used",
    ("inference/export.py", r"softmax\(.*, (dim=None)?\)$"): "for a 2-D input torch's implicit softmax dimension is 1",
    ("inference/predictor.py", r"torch\.empty\(images\.shape, (dtype=None)?\)\.copy_\(images\)"):
        "a float32 copy holds the same whole numbers 0-255, and normalize converts to float32 first: the same inputs",
    ("inference/export.py", r"torch\.zeros\(\(3, \*predictor\.shape\)"):
        "the example's batch only has to be above 1 (a batch of 1 would be specialised): 3 exports the same graph",
    ("inference/export.py", r'Dim\("batch", (min=(None|2))?\)'):
        "ONNX keeps no bounds on a dynamic dimension: min only bounds torch's tracing, whose example has 2 (a "
        "batch of 1 runs: tested)",
    ("inference/export.py", r"opset_version=OPSET, \)|opset_version=OPSET, dynamo=False\)"):
        "torch 2.9 and later export with dynamo by default (the operator set, names and batch dimension are tested)",
    ("inference/export.py", r"log_severity_level = 4"): "onnxruntime's log level: errors or fatal errors only, "
        "and it logs neither for a model it runs; never a result",
    ("inference/export.py", r"InferenceSession\(str\(path\), (None, |)providers=_providers\(ort\)\)"):
        "the options only quieten onnxruntime's warnings (the CUDA provider's on a GPU machine): never a result",
    ("inference/export.py", r"InferenceSession\(str\(path\), options, (providers=None)?\)"):
        "onnxruntime's default providers are the available ones: on a CPU-only machine the CPU either way "
        "(the order is tested in _providers)",
    ("inference/export.py", r"session\.run\(None, \{INPUT"): "the graph has one output, OUTPUT: None asks for all of them",
    ("inference/export.py", r"probs\.astype\(None\)"): "numpy's astype(None) is float64, the type named",
    ("inference/predictor.py", r"_build\(torch\.load\(io\.BytesIO\(data\), (weights_only=False|)\), torch\.device"):
        "save_predictor reads back the bytes it has just written itself: weights_only guards files from elsewhere "
        "(load_predictor's refusal is tested)",
    ("inference/export.py", r"redirect_stdout\(None\)"): "print() with sys.stdout set to None writes nothing either",
    ("inference/export.py", r"export\(module, \(example,\), (input_names=None, )?output_names="):
        "torch names the graph's input after forward's parameter, images, which is INPUT (the name is tested)",
    ("inference/export.py", r'\("(XXCUDAExecutionProviderXX|cudaexecutionprovider|CUDAEXECUTIONPROVIDER)", "CPUExecutionProvider"\)'):
        "onnxruntime's CUDA provider: on a CPU-only machine it is never available (a GPU run would tell)",
    ("inference/export.py", r"worst < TOLERANCE\}"):
        "differs only when the largest difference is 1e-4 to the last bit, which no float32 output lands on",
    (r"inference/(export|predictor)\.py", r"stats_tensors\(predictor\.stats, None\)|model\.to\(None\)|"
                                        r"_build\(saved, None\)|to_inputs\(images, self\.stats, None\)|"
                                        r"_build\(torch\.load\(io\.BytesIO\(data\), weights_only=True\), None\)|"
                                        r'torch\.load\(io\.BytesIO\(data\), (map_location=None, )?weights_only=True\)|'
                                        r'_build\(saved, device and torch\.device\("cpu"\)\)'):
        "device placement: on a CPU-only machine None is the same device (a GPU run would tell)",
}


def equivalent(module: str, diff: str) -> str | None:
    """The reason ``diff`` (a mutant's changed lines) is equivalent, or None."""
    import re

    added = "\n".join(line for line in diff.splitlines() if line.startswith("+"))
    return next((why for (mod, pattern), why in EQUIVALENT.items()
                 if re.fullmatch(mod, module) and re.search(pattern, added, re.M)), None)


def modules() -> list[str]:
    """The modules mutmut mutates (pyproject.toml's only_mutate), as paths in the package: data/prepare.py."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return [Path(p).relative_to("src/foldwise").as_posix() for p in config["only_mutate"]]


def results() -> dict[str, dict[str, str]]:
    """module -> mutant name -> status, from mutmut's result files."""
    from mutmut.stats import status_by_exit_code

    out = {}
    for name in modules():
        meta = MUTANTS / f"{name}.meta"
        if not meta.is_file():
            raise SystemExit(f"{meta} not found: run `make mutation` (mutmut run) first")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out[name] = {key: status_by_exit_code[code] for key, code in codes.items()}
    outside = json.loads(OUTSIDE_RESULTS.read_text()) if OUTSIDE_RESULTS.is_file() else {}
    for statuses in out.values():
        for key, status in statuses.items():
            if status in (SURVIVED, NO_TESTS) and outside.get(key) == KILLED:
                statuses[key] = KILLED  # by a test's own subprocesses (check_outside)
    return out


def check_outside() -> dict[str, str]:
    """Run ``OUTSIDE``'s tests against each alive mutant of its modules, applied to a scratch copy of
    the tracked files (and mutants/); record killed / survived per mutant in ``OUTSIDE_RESULTS``."""
    import tempfile

    verdicts = json.loads(OUTSIDE_RESULTS.read_text()) if OUTSIDE_RESULTS.is_file() else {}
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    alive = [(name, mutant) for name, statuses in results().items() if name in OUTSIDE
             for mutant, status in statuses.items()
             if status in (SURVIVED, NO_TESTS) and not equivalent(name, diff_of(mutant))]
    for module, mutant in alive:
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)
            for name in filter(None, tracked.stdout.split("\0")):
                (scratch / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, scratch / name)
            shutil.copytree(ROOT / "mutants", scratch / "mutants")
            subprocess.run([sys.executable, "-m", "mutmut", "apply", mutant], cwd=scratch, check=True,
                           capture_output=True)
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   *OUTSIDE[module]], cwd=scratch, capture_output=True, text=True, timeout=900,
                                  env={**os.environ, "PYTHONPATH": str(scratch / "src")})
        if done.returncode not in (0, 1):
            raise SystemExit(f"{mutant}: pytest exited {done.returncode}\n{done.stdout[-2000:]}")
        verdicts[mutant] = KILLED if done.returncode == 1 else SURVIVED
        print(f"{mutant}: {verdicts[mutant]}", flush=True)
        OUTSIDE_RESULTS.write_text(json.dumps(verdicts, indent=2) + "\n")
    return verdicts


def score(statuses: dict[str, str]) -> tuple[Counter, float]:
    """Counts per status; the score is the mutants the tests catch (killed, or made to hang: a test that
    never ends fails the suite) / the mutants that are not equivalent."""
    counts = Counter(statuses.values())
    total = sum(counts.values()) - counts[EQUIV]
    return counts, (counts[KILLED] + counts[TIMEOUT]) / total if total else 1.0


@functools.cache
def _functions(module: str) -> dict[str, str]:
    """Source of every function in mutmut's copy of ``module`` (originals and mutants side by side)."""
    import ast

    source = (MUTANTS / f"{module}.py").read_text()
    lines = source.splitlines()
    return {node.name: "\n".join(lines[node.lineno - 1:node.end_lineno]) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def diff_of(mutant: str) -> str:
    """The changed lines of ``mutant``: its function as mutmut generated it against the original."""
    import difflib
    import re

    module, name = mutant.rsplit(".", 1)
    functions = _functions("/".join(module.split(".")[1:]))
    original, mutated = functions.get(re.sub(r"__mutmut_\d+$", "__mutmut_orig", name)), functions.get(name)
    if original is None or mutated is None:
        return f"(see: mutmut show {mutant})"
    mutated = mutated.replace(name, re.sub(r"__mutmut_\d+$", "__mutmut_orig", name), 1)  # the def line too
    changed = difflib.unified_diff(original.splitlines(), mutated.splitlines(), lineterm="", n=0)
    return "\n".join(line for line in changed if line[:1] in "+-" and line[:3] not in ("---", "+++"))


def write_report(times: dict[str, float]) -> int:
    """Write benchmarks/mutation.md from the last run; return the number of mutants left alive."""
    by_module = results()
    rows, alive, same = [], [], []
    totals: Counter = Counter()
    for name, statuses in by_module.items():
        for mutant in [m for m, s in statuses.items() if s in (SURVIVED, NO_TESTS)]:
            diff = diff_of(mutant)
            why = equivalent(name, diff)
            if why:
                statuses[mutant] = EQUIV
                same.append((mutant, diff, why))
            else:
                alive.append((mutant, diff))
        counts, value = score(statuses)
        totals.update(counts)
        rows.append(f"| `{name}` | {sum(counts.values())} | {counts[KILLED]} | {counts[EQUIV]} | {counts[SURVIVED]} | "
                    f"{counts[NO_TESTS]} | {counts[TIMEOUT]} | {value:.1%} |")
    total = sum(totals.values())
    rows.append(f"| **all** | {total} | {totals[KILLED]} | {totals[EQUIV]} | {totals[SURVIVED]} | {totals[NO_TESTS]} | "
                f"{totals[TIMEOUT]} | {(totals[KILLED] + totals[TIMEOUT]) / (total - totals[EQUIV]):.1%} |")
    lines = ["# Mutation testing", "", "Regenerate: `make mutation` (mutmut; about three hours on 2 cores, not in CI). "
             "Score: (killed + timeout) / (all mutants - equivalent ones): a mutant that makes a test hang "
             "fails the suite too; one no test reaches counts as alive. Equivalent: listed below with the reason (benchmarks/mutation.py, EQUIVALENT).",
             "", "| module | mutants | killed | equivalent | survived | no test reaches it | timeout | score |",
             "|---|---|---|---|---|---|---|---|", *rows, ""]
    unchecked = total - sum(totals[s] for s in (KILLED, EQUIV, SURVIVED, NO_TESTS, TIMEOUT))
    if unchecked:  # not checked, suspicious, segfault: the run did not finish or went wrong
        lines += [f"**Incomplete: {unchecked} mutants have no verdict** ({dict(totals)}); run it again.", ""]
    if "full" in times:
        again = (f"; then {times['survivors'] / 60:.0f} min re-testing the mutants it left alive, once the tests "
                 f"that kill them were added (`--survivors`)" if "survivors" in times else "")
        lines += [f"Run time: {times['full'] / 60:.0f} min (`mutmut run`, {os.cpu_count()} CPUs){again}.", ""]
    outside = json.loads(OUTSIDE_RESULTS.read_text()) if OUTSIDE_RESULTS.is_file() else {}
    if outside:
        killed = sum(v == KILLED for v in outside.values())
        lines += [f"Killed outside mutmut's view: {killed} of the {len(outside)} mutants left alive in "
                  f"{', '.join(f'`{m}`' for m in OUTSIDE)}, by {', '.join(sorted({t for ts in OUTSIDE.values() for t in ts}))} "
                  "(their code runs only in the processes those tests start; `--outside`).", ""]
    lines += [f"## Mutants alive ({len(alive)})", ""]
    for mutant, diff in alive:
        lines += [f"- `{mutant}`", "", "```diff", diff, "```", ""]
    lines += [f"## Equivalent mutants ({len(same)})", ""]
    for mutant, diff, why in same:
        lines += [f"- `{mutant}`: {why}", "", "```diff", diff, "```", ""]
    REPORT.write_text("\n".join(lines))
    print("\n".join(rows))
    return len(alive)


def alive_names() -> list[str]:
    """The mutants the last run left alive (survived, no test reaches them), equivalent ones aside."""
    return [mutant for name, statuses in results().items() for mutant, status in statuses.items()
            if status in (SURVIVED, NO_TESTS) and not equivalent(name, diff_of(mutant))]


def _sync_tests() -> None:
    """Copy tests/, stages/ and params.yaml into mutants/ where they changed: mutmut copies a file only
    when mutants/ has none, so a test added since the last run would otherwise never run there."""
    for name in ("tests", "stages", "params.yaml"):
        source = ROOT / name
        for path in [source] if source.is_file() else source.rglob("*"):
            target = ROOT / "mutants" / path.relative_to(ROOT)
            if path.is_file() and "__pycache__" not in path.parts and (
                    not target.is_file() or target.read_bytes() != path.read_bytes()):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def _mutmut(env: dict[str, str], *names: str) -> None:
    """``mutmut run``: every mutant without a result (new or changed functions), or the ``names`` given
    (mutmut re-tests a named mutant even when it has a result)."""
    if (ROOT / "mutants").is_dir():
        _sync_tests()
    done = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(os.cpu_count() or 1),
                           *names], cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"mutmut run exited {done.returncode}; nothing summarised (see its output above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="only summarise the last run")
    parser.add_argument("--resume", action="store_true", help="continue the last run instead of starting afresh")
    parser.add_argument("--survivors", action="store_true",
                        help="after adding tests: re-test only the mutants the last run left alive")
    parser.add_argument("--outside", action="store_true",
                        help="run the tests that start subprocesses (OUTSIDE) against the mutants left alive")
    args = parser.parse_args(argv)
    times = json.loads(TIMES.read_text()) if TIMES.is_file() else {}
    if args.outside:
        check_outside()
    elif not args.report:
        if not (args.resume or args.survivors):
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
            times = {}
        started = time.perf_counter()
        # one thread per mutant process: two processes on 2 cores, no oversubscription
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        key = "survivors" if args.survivors else "full"
        names = alive_names() if args.survivors else []
        if not args.survivors or names:
            _mutmut(env, *names)
        check_outside()  # what mutmut cannot see: the DDP branch under torchrun
        times[key] = times.get(key, 0.0) + time.perf_counter() - started
        TIMES.write_text(json.dumps(times))
    alive = write_report(times)
    print(f"{alive} mutants alive (not equivalent); see {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
