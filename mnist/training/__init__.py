"""Stage 3 of a run, the training (conf/trainer, conf/optimizer, conf/scheduler, conf/device)."""
