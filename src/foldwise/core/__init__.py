"""What every stage shares, depending on nothing else in foldwise.

- ``params``: the typed, validated view of params.yaml (``Params``), its defaults and variants;
- ``outputs``: atomic writes of stage outputs (a killed stage leaves the previous file);
- ``errors``: ``UserError``, bad input whose message says what would be valid;
- ``cli``: a stage's ``main`` run with one-line user errors;
- ``progress``: progress bars on a terminal, silence in logs;
- ``npm``: pinned, checksummed browser assets from the npm registry;
- ``remote``: ``foldwise pull`` / ``push``, outputs and the run-cache shared through a DVC remote;
- ``dvc_queue``: the processes of DVC's experiment queue workers, found without asking DVC.
"""
