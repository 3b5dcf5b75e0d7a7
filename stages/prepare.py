"""DVC stage: reorganise raw files into data/prepared/{train,valid,test}/<class>/ plus a manifest."""

import argparse
import json
from contextlib import closing
from pathlib import Path

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.outputs import atomic_dir
from foldwise.core.params import load_params
from foldwise.data.checksums import verify_files
from foldwise.data.prepare import REPORT, SKIPPED, prepare
from foldwise.data.sources import get_source, load_raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="folder written by the download stage")
    parser.add_argument("--out", required=True, help="folder for the image tree (data/prepared)")
    args = parse_stage_args(parser, outputs=("out",))
    p = load_params()
    source = get_source(p.dataset)
    # download verified them; a copy damaged since (disk, DVC cache) is named here, not by a parser
    verify_files(Path(args.raw) / p.dataset, source.files,
                 f"restore it from DVC's cache with `dvc checkout -f {args.raw}`, or if that does not "
                 f"help (the cached copy is damaged too), fetch it again: `dvc repro -f download`")
    with closing(load_raw(source, Path(args.raw) / p.dataset, p.label_pattern)) as raw, \
            atomic_dir(args.out) as tmp:
        prepare(raw, raw.classes, tmp, p.valid_size, p.max_images_per_split, p.seed, p.test_size,
                channels=p.channels or source.channels, image_size=p.image_size)
    report = json.loads((Path(args.out) / REPORT).read_text())
    print(json.dumps(report, indent=2))
    if report["skipped"]["total"]:
        print(f"skipped {report['skipped']['total']} files; each is listed in {Path(args.out) / SKIPPED}")


if __name__ == "__main__":
    run_stage(main)
