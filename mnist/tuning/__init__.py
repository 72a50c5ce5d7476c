"""Hyperparameter search on Optuna (scripts/tune.py): every trial a training job and a child
MLflow run, in a study that can be resumed and shared by several processes."""
