"""foldwise: a reproducible image-classification pipeline."""
