"""Stage 1 of a run, the data (conf/dataset, conf/augmentation)."""
