"""Hyperparameter search on Optuna, driven by Hydra configs (scripts/tune.py): search spaces
in conf/hparams_search/, every trial a training job and a child MLflow run, pruned on its
validation accuracy, in a study stored beside the MLflow store so that it can be resumed
and shared by several processes."""
