"""``foldwise predict``: classify image files, folders, archives or CSVs of paths with the pipeline's
predictor (or its ONNX export), writing one CSV or JSON row per file.

    foldwise predict photos/ --out predictions.csv
    foldwise predict shirt.jpg --top-k 5 --json
    foldwise predict data/prepared/test --onnx models/model.onnx

Bad files are rows with a reason, not errors; the exit status is 0 when every input could be
listed. A missing input, an empty one or a missing or damaged predictor is a one-line error (exit 1).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any

from foldwise.core.cli import report_user_errors
from foldwise.core.errors import UserError

DEFAULT_PREDICTOR = "models/predictor"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foldwise", description="Use the model foldwise trained.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify images", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("inputs", nargs="+", help="image files, folders (recursively), .zip/.tar archives, "
                         "or CSVs with a 'path' column (paths relative to the CSV)")
    predict.add_argument("--predictor", default=DEFAULT_PREDICTOR,
                         help=f"the predictor folder evaluate writes (default: {DEFAULT_PREDICTOR})")
    predict.add_argument("--onnx", help="run this ONNX export with onnxruntime instead of the torch predictor")
    predict.add_argument("--out", default="-", help="output file (default: standard output)")
    predict.add_argument("--json", action="store_true", help="write a JSON array instead of CSV")
    predict.add_argument("--top-k", type=int, default=3, help="classes listed per image, most probable first "
                         "(default: 3)")
    predict.add_argument("--workers", type=int, default=None,
                         help="decoding processes (default: FOLDWISE_WORKERS or min(4, CPUs); 0 = none)")
    pull = commands.add_parser("pull", help="restore from the DVC remote what it holds (outputs, run-cache)",
                               description=remote_doc())
    pull.add_argument("-r", "--remote", help="DVC remote (default: the default remote)")
    push = commands.add_parser("push", help="share outputs, the run-cache and experiments through the DVC remote",
                               description=remote_doc())
    push.add_argument("-r", "--remote", help="DVC remote (default: the default remote)")
    push.add_argument("--git-remote", help="also push the experiments to this git remote (dvc exp push)")
    return parser


def remote_doc() -> str:
    from foldwise.core import remote

    return (remote.__doc__ or "").split("\n\n")[0]


def _columns(classes: int, top_k: int) -> list[str]:
    tops = [name for rank in range(1, min(top_k, classes) + 1) for name in (f"top{rank}", f"top{rank}_probability")]
    return ["path", "predicted", "probability", *tops, "skipped"]


def _write(rows: Iterator[dict[str, Any]], out: IO[str], as_json: bool, columns: list[str]) -> Counter:
    """Stream ``rows`` to ``out``; the count of skipped files per reason (``""``: predicted)."""
    counts: Counter = Counter()
    if as_json:
        out.write("[")
        for n, row in enumerate(rows):
            counts[row["skipped"]] += 1
            out.write(("," if n else "") + "\n" + json.dumps({k: row.get(k, "") for k in columns}))
        out.write("\n]\n")
        return counts
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        counts[row["skipped"]] += 1
        writer.writerow(row)
    return counts


def predict_command(args: argparse.Namespace) -> None:
    """Classify ``args.inputs`` and write the rows (see ``_parser``)."""
    from foldwise.core.progress import progress
    from foldwise.data.batches import default_workers
    from foldwise.inference.inputs import collect
    from foldwise.inference.predict import predict_items
    from foldwise.training.engine import choose_device

    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: give 1 or more classes per image")
    if args.onnx:
        from foldwise.inference.export import onnx_log_probs, open_session

        session, summary = open_session(args.onnx)
        model = lambda images: onnx_log_probs(session, images)  # noqa: E731
        classes, spec = summary["classes"], summary["input"]
        channels, size = spec["channels"], spec["size"]
    else:
        from foldwise.inference.predictor import load_predictor

        predictor = load_predictor(args.predictor, choose_device())
        model, classes, channels, size = predictor.log_probs, predictor.classes, predictor.channels, predictor.size
    size = size if isinstance(size, int) else tuple(size)
    workers = default_workers() if args.workers is None else args.workers
    items = collect(args.inputs)
    first = next(items, None)
    if first is None:
        raise UserError(f"no files in {', '.join(args.inputs)}; give image files, folders with images, archives "
                        f"or a CSV of paths")
    with progress(unit="img", desc="predict") as bar:
        rows = predict_items(itertools.chain([first], items), model, classes, channels, size, args.top_k, workers,
                             bar.update)
        columns = _columns(len(classes), args.top_k)
        if args.out == "-":
            counts = _write(rows, sys.stdout, args.json, columns)
        else:
            with open(args.out, "w", newline="") as out:
                counts = _write(rows, out, args.json, columns)
    skipped = {reason: n for reason, n in sorted(counts.items()) if reason}
    print(f"classified {counts['']} images; skipped {sum(skipped.values())}"
          + (f" ({', '.join(f'{r}: {n}' for r, n in skipped.items())})" if skipped else "")
          + ("" if args.out == "-" else f"; rows in {args.out}"), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The ``foldwise`` console script; user errors are one line on stderr and exit status 1."""
    args = _parser().parse_args(argv)
    if args.command in ("pull", "push"):
        from foldwise.core import remote

        status = [0]

        def share() -> None:
            status[0] = remote.main(args.command, args.remote, getattr(args, "git_remote", None))

        return report_user_errors(share) or status[0]
    return report_user_errors(lambda: predict_command(args))


if __name__ == "__main__":
    sys.exit(main())
