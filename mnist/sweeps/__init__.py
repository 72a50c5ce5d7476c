"""What makes a multirun a sweep: a Hydra callback (`callback`) that validates every job
first (`jobs`), opens the parent run and ends it with the sweep's summary; continuing a
stopped sweep, and a FAILED run for a job that failed before its own run opened (`resume`);
SIGTERM to the launcher stopping its jobs cleanly (`stop`); the private parts of Hydra and
loky it needs (`internals`). What it says to MLflow: mnist/tracking/sweep_runs.py."""
