"""DVC stage: reorganise raw files into data/prepared/{train,valid,test}/<class>/ plus a manifest."""

import argparse
from pathlib import Path

from foldwise.cli import run_stage
from foldwise.datasets import get_source
from foldwise.outputs import atomic_dir
from foldwise.params import load_params
from foldwise.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="folder written by the download stage")
    parser.add_argument("--out", required=True, help="folder for the image tree (data/prepared)")
    args = parser.parse_args()
    p = load_params()
    source = get_source(p.dataset)
    splits = source.read(Path(args.raw) / p.dataset)
    with atomic_dir(args.out) as tmp:
        manifest = prepare(splits, source.classes, tmp, p.valid_size, p.max_images_per_split, p.seed,
                           p.test_size)
    print(manifest.groupby("split").size().to_string())


if __name__ == "__main__":
    run_stage(main)
