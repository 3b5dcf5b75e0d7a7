"""Does ``precision: bf16`` pay on this CPU, and on CPUs without its bfloat16 instructions?

    .venv/bin/python benchmarks/precision.py [--out benchmarks/precision.md] [--seconds 4] [--rounds 3]
                                             [--images 4096] [--models default,wide,resnet8]
                                             [--isas native,AVX512_CORE_BF16,AVX512_CORE,AVX2]

Times training steps (``engine.train_one_epoch``: the pipeline's own step, augmentation off, batch
256, 1 thread as crossval's side-by-side runs use) in float32 and in bfloat16 autocast, for the
default LeNet [8, 32], the wider LeNet [16, 64] and ResNet-8 (width 0.5), on synthetic 28x28 images
(speed does not depend on pixel values). fp32 and bf16 alternate within each round, so drift in the
machine's speed hits both; each figure is the median images/s over ``--rounds`` rounds of
``--seconds`` each.

Then again with oneDNN (which runs the convolutions and matrix products) and ATen capped below this
CPU's instruction set, in a fresh process each (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``),
to show what the same code does on CPUs that lack them:

- ``AVX512_CORE_BF16``: AVX-512 with bfloat16 dot products, no AMX (e.g. AMD EPYC Zen 4, Intel Xeon
  Cooper Lake);
- ``AVX512_CORE``: AVX-512 without bfloat16 instructions (Intel Xeon Skylake to Ice Lake);
- ``AVX2``: no AVX-512 (most laptops, AMD EPYC before Zen 4).

A cap cannot add instructions: on a CPU without AMX the native row is already one of the capped
ones. Each row names the instruction set oneDNN reported using.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from run import machine  # noqa: E402

from foldwise.core.params import load_params  # noqa: E402
from foldwise.data.batches import Preloaded  # noqa: E402
from foldwise.training.engine import to_training_layout, train_one_epoch  # noqa: E402
from foldwise.training.models import build_model  # noqa: E402
from foldwise.training.optim import make_optimizer  # noqa: E402

MODELS = {  # name -> (label, overrides of params.yaml)
    "default": ("LeNet [8, 32] (params.yaml's model)", {"model": "lenet", "conv_channels": (8, 32)}),
    "wide": ("LeNet [16, 64]", {"model": "lenet", "conv_channels": (16, 64)}),
    "resnet8": ("ResNet-8, width 0.5", {"model": "resnet8", "width": 0.5}),
}
ISAS = {  # ONEDNN_MAX_CPU_ISA -> (ATEN_CPU_CAPABILITY, what such a CPU is)
    "native": ("", "this CPU, uncapped"),
    "AVX512_CORE_BF16": ("avx512", "bfloat16 instructions, no AMX"),
    "AVX512_CORE": ("avx512", "AVX-512, no bfloat16 instructions"),
    "AVX2": ("avx2", "AVX2 only"),
}


def measure(models: list[str], seconds: float, rounds: int, images: int) -> dict:
    """In this process (started under its instruction-set cap): median images/s per model and precision."""
    torch.set_num_threads(1)
    base = load_params(ROOT / "params.yaml")
    gen = torch.Generator().manual_seed(0)
    data = Preloaded(torch.randn(images, 1, 28, 28, generator=gen), torch.randint(0, 10, (images,), generator=gen))
    out: dict = {}
    for name in models:
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        setups = {}
        for precision in rates:
            p = dataclasses.replace(base, **MODELS[name][1], precision=precision, augment=False, batch_size=256)
            torch.manual_seed(0)
            model = build_model((1, 28, 28), 10, p)
            to_training_layout(model)
            setups[precision] = (model, make_optimizer(model, p), p)
            train_one_epoch(model, data, setups[precision][1], p, gen)  # warm-up: oneDNN builds its kernels
        for _ in range(rounds):
            for precision, (model, optimizer, p) in setups.items():
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    train_one_epoch(model, data, optimizer, p, gen)
                    done += len(data)
                rates[precision].append(done / (time.perf_counter() - start))
        out[name] = {k: statistics.median(v) for k, v in rates.items()}
    return out


def onednn_isa(env: dict[str, str]) -> tuple[str, bool]:
    """The instruction set oneDNN reports under ``env``, and whether torch hands it bfloat16 convolutions
    (where it does not, torch falls back to its own, far slower ones): a verbose process runs a small
    convolution in float32 (channels-last: always oneDNN's), then in bfloat16."""
    code = ("import torch; torch.set_num_threads(1); conv = torch.nn.Conv2d(1, 8, 5)\n"
            "conv.to(memory_format=torch.channels_last)\n"
            "x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last); conv(x)\n"
            "with torch.autocast('cpu', dtype=torch.bfloat16): conv(x)")
    env = {**env, "ONEDNN_VERBOSE": "1"}
    lines = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.splitlines()
    isa = next((line.split("isa:", 1)[1].strip() for line in lines if ",isa:" in line), "unreported")
    return isa, any(",exec," in line and "convolution" in line and "bf16" in line for line in lines)


def child(isa: str, models: list[str], seconds: float, rounds: int, images: int) -> dict:
    """Run ``measure`` in a fresh process under the ``isa`` cap (env vars act at start-up only)."""
    env = dict(os.environ)
    for key in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA"):
        env.pop(key, None)
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"], env["ATEN_CPU_CAPABILITY"] = isa, ISAS[isa][0]
    args = [sys.executable, __file__, "--child", "--models", ",".join(models), "--seconds", str(seconds),
            "--rounds", str(rounds), "--images", str(images)]
    run = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["isa"], result["bf16_onednn"] = onednn_isa(env)
    return result


def markdown(results: dict[str, dict], models: list[str], seconds: float, rounds: int, minutes: float) -> str:
    """The report: one row per instruction-set cap and model."""
    torch.set_num_threads(1)  # the machine line names the threads the measuring processes used
    lines = [
        "# bfloat16 against float32 training on CPUs",
        "",
        "Written by `.venv/bin/python benchmarks/precision.py --out benchmarks/precision.md` (see its docstring): "
        f"training steps of the pipeline's engine, 1 thread, batch 256, median images/s over {rounds} rounds of "
        f"{seconds:g} s per precision, fp32 and bf16 alternating; the capped rows run this CPU with oneDNN and ATen "
        "limited to fewer instructions, to show what `precision: bf16` does on CPUs that lack them.",
        "",
        f"Machine: {machine(torch.device('cpu'))}; the whole run took "
        f"{minutes:.0f} minutes.",
        "",
        "| instruction set (cap) | oneDNN reports | bf16 convolutions in oneDNN | model | fp32 images/s "
        "| bf16 images/s | bf16 / fp32 |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for isa, r in results.items():
        for name in models:
            fp32, bf16 = r[name]["fp32"], r[name]["bf16"]
            lines.append(f"| {isa}: {ISAS[isa][1]} | {r['isa']} | {'yes' if r['bf16_onednn'] else 'no'} | "
                         f"{MODELS[name][0]} | {fp32:,.0f} | {bf16:,.0f} | {bf16 / fp32:.2f}x |")
    lines += ["", "bf16 / fp32 above 1 means `precision: bf16` trains faster. The default stays `fp32`: "
              "bfloat16 pays only where the CPU has AMX, and `foldwise` warns when a run asks for it on a CPU "
              "without (docs/models.md).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write the markdown report here (default: print it)")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per precision per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=4096, help="synthetic training images per pass")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--isas", default=",".join(ISAS), help=f"comma-separated, of {', '.join(ISAS)}")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    models, isas = a.models.split(","), a.isas.split(",")
    for value, valid, key in ((models, MODELS, "--models"), (isas, ISAS, "--isas")):
        unknown = [v for v in value if v not in valid]
        if unknown:
            ap.error(f"{key}: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    if a.child:
        print(json.dumps(measure(models, a.seconds, a.rounds, a.images)))
        return
    start = time.perf_counter()
    results = {}
    for isa in isas:
        results[isa] = child(isa, models, a.seconds, a.rounds, a.images)
        print(f"{isa}: {json.dumps(results[isa])}", file=sys.stderr, flush=True)
    report = markdown(results, models, a.seconds, a.rounds, (time.perf_counter() - start) / 60)
    if a.out:
        a.out.write_text(report)
    else:
        print(report)


if __name__ == "__main__":
    main()
