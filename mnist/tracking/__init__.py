"""Stage 4 of a run, the tracking: where the MLflow store is (`store`), a job's run and
what it logs (`runs`), and optional TensorBoard files (`tensorboard`). A multirun as a
parent run with children is mnist/sweeps/. Configured by conf/logger."""
