"""DVC stage: the predictor evaluate used as one ONNX graph (uint8 images in, calibrated probabilities
out), checked against the torch predictor with onnxruntime on every test image."""

import argparse

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.errors import UserError
from foldwise.core.outputs import write_json
from foldwise.core.progress import progress
from foldwise.data.batches import uint8_chunks
from foldwise.data.layout import split_files
from foldwise.inference.export import check_parity, export_onnx, open_session
from foldwise.inference.predictor import load_predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predictor", required=True, help="evaluate's predictor folder")
    parser.add_argument("--prepared", required=True, help="the prepared data: the check runs on its test split")
    parser.add_argument("--onnx", required=True, help="the ONNX file to write")
    parser.add_argument("--check", required=True, help="JSON: the parity check's result")
    args = parse_stage_args(parser, outputs=("onnx", "check"))
    predictor = load_predictor(args.predictor)  # on the CPU: the export is traced there
    export_onnx(predictor, args.onnx, predictor.params.get("model", ""))
    session, _ = open_session(args.onnx)
    files = split_files(args.prepared, "test")
    with progress(total=len(files), unit="img", desc="ONNX check") as bar:
        result = check_parity(session, predictor, (bar.update(len(c)) or c for c in uint8_chunks(files, workers=0)))
    write_json(args.check, result)
    print(f"ONNX check on {result['images']} test images: {result['argmax_agree']} argmaxes agree, largest "
          f"probability difference {result['max_abs_probability_difference']:.3g} (tolerance {result['tolerance']})")
    if not result["passed"]:
        raise UserError(f"{args.onnx} does not reproduce the torch predictor (see {args.check}); "
                        f"report it with that file and the model's params")


if __name__ == "__main__":
    run_stage(main)
