"""The download, prepare and normalize stages, and the batches training reads.

- ``sources``: the SOURCES registry (dataset -> files, checksums, reader);
- ``download``: fetch and verify a source's files (``checksums``: their md5s, checked again by prepare);
- ``archives``, ``readers``, ``images``: list the files of a folder or an archive, find their labels,
  decode one image;
- ``prepare``: split into train/valid/test class folders with a manifest and a skip report;
- ``layout``: the prepared folder's file names, and a split's files, labels and classes;
- ``normalize``: the train split's per-channel mean and std, and applying them;
- ``batches``: a split as batches, preloaded on the device or streamed from its files.
"""
