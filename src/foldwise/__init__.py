"""foldwise: a reproducible image-classification pipeline.

Subpackages follow dvc.yaml, and each imports only the ones above it in this list
(tests/test_layers.py checks it):

- ``core``: params.yaml's typed view, atomic outputs, user errors, the stages' error handling, npm assets;
- ``data``: download, prepare and normalize: sources, archives, images, the prepared layout, batches;
- ``reporting``: statistics and figures of results (CV tests, metrics, plot data, report);
- ``training``: models, the training loop, cross-validation and the final model;
- ``inference``: using the model: the predictor evaluate writes, ``foldwise predict``, the ONNX export;
- ``live``: the monitors that watch training (Visdom, dvclive) and the Visdom server.

Each subpackage's docstring is its map. ``stages/`` holds the thin DVC entry points; ``__main__``
is ``python -m foldwise predict``.
"""
