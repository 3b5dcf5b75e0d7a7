"""DVC stage: fetch the dataset's original files into data/raw/<dataset>/, checksum-verified."""

import argparse
import os

from foldwise.cli import run_stage
from foldwise.datasets import get_source
from foldwise.download import download
from foldwise.outputs import atomic_dir
from foldwise.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder for the raw files (data/raw)")
    args = parser.parse_args()
    p = load_params()
    source = get_source(p.dataset)
    # FOLDWISE_MIRROR: a folder or URL tried before the built-in mirrors.
    with atomic_dir(args.out) as tmp:
        used = download(source, tmp / p.dataset, [os.environ.get("FOLDWISE_MIRROR", "")])
    for name, mirror in used.items():
        print(f"{name}: from {mirror}")


if __name__ == "__main__":
    run_stage(main)
