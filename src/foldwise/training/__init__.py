"""The crossval, train and evaluate stages: models, the explicit PyTorch loop, cross-validation, the final model.

- ``models``: the MODELS registry;
- ``optim``: optimisers, learning-rate schedules, the L1 penalty;
- ``augment``: per-image random crop and flip of training batches;
- ``callbacks``: the callbacks training calls (guarded: a monitor never breaks training);
- ``ddp``: the final training in N processes under torchrun (DDP): slices, sums, process 0 writes;
- ``engine``: device choice, one epoch, evaluation, ``fit`` with early stopping and resume;
- ``resume``: resumable training state outside every DVC output, keyed by params, inputs and code;
- ``crossval``: every compared variant on the same K folds;
- ``fanout``: crossval's runs as Ray tasks (``FOLDWISE_RAY``), locally or on a cluster;
- ``final``: the chosen variant trained on the whole train split;
- ``model_files``: models/model.pt and crossval's fold models (models/folds/), sha256-checked;
- ``ensemble``: evaluate's models: single, fold ensemble, test-time flips, temperature scaling.
"""
