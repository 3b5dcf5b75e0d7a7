"""Using the trained model: the predictor evaluate writes, ``foldwise predict``, ONNX export, model card.

- ``predictor``: the self-contained predictor (``models/predictor/``): the members evaluate used,
  test-time flips, the temperature, the classes and the whole preprocessing; saved, checked, loaded;
- ``inputs``: the images to classify, from files, folders, zip/tar archives or a CSV of paths,
  each read with prepare's caps and skipped with prepare's reasons;
- ``predict``: batched, streaming prediction with decoding spread over processes, and its rows;
- ``export``: the whole predictor as one ONNX graph, its parity check with onnxruntime, and running it;
- ``card``: the model card (markdown) written beside the predictor;
- ``cli``: ``foldwise predict`` (also ``python -m foldwise predict``).

Imports ``core``, ``data``, ``reporting`` and ``training``; nothing imports it but ``stages/``.
"""
