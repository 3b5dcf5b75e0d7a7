"""DVC stage: fetch the dataset's original files into data/raw/<dataset>/, checksum-verified.

Datasets that take your own images (params' data_path) get a copy of them
instead, so DVC versions exactly what was trained on.
"""

import argparse
import os

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.outputs import atomic_dir
from foldwise.core.params import load_params
from foldwise.data.download import copy_user_data, download, given_user_data
from foldwise.data.sources import get_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder for the raw files (data/raw)")
    args = parse_stage_args(parser, outputs=("out",))
    p = load_params()
    source = get_source(p.dataset)
    user = given_user_data(p.data_path) if source.user_data != "no" else None
    if source.user_data == "required" and user is None:
        raise ValueError(f"dataset {p.dataset!r} needs your images, and data_path ({p.data_path}) holds "
                         f"none yet. {source.user_hint}")
    with atomic_dir(args.out) as tmp:
        if user is not None:
            print(f"copied {copy_user_data(user, tmp / p.dataset, source.user_hint)}")
        else:
            # FOLDWISE_MIRROR: a folder or URL tried before the built-in mirrors.
            used = download(source, tmp / p.dataset, [os.environ.get("FOLDWISE_MIRROR", "")])
            for name, mirror in used.items():
                print(f"{name}: from {mirror}")


if __name__ == "__main__":
    run_stage(main)
