"""What makes a multirun a sweep: a Hydra callback with a parent run (`callback`), resuming
(`resume`) and a clean stop on SIGTERM (`stop`)."""
