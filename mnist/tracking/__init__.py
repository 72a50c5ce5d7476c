"""Stage 4 of a run, the tracking: where the MLflow store is (`store`), a job's run and
what it logs (`runs`), a multirun as a parent run with children (`sweep`), and optional
TensorBoard files (`tensorboard`). Configured by conf/logger."""
