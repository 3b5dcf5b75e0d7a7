"""DVC stage: per-channel mean/std of the TRAIN split into a small JSON (streamed: any dataset size)."""

import argparse

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.outputs import write_json
from foldwise.data.batches import normalization_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, help="folder written by the prepare stage")
    parser.add_argument("--out", required=True, help="JSON file for the statistics (data/stats.json)")
    args = parse_stage_args(parser, outputs=("out",))
    stats = normalization_stats(args.prepared)
    write_json(args.out, stats)
    print(stats)


if __name__ == "__main__":
    run_stage(main)
