"""What makes a multirun a sweep: a Hydra callback (`callback`) that validates every job
first (`jobs`), opens the parent run and ends it with the sweep's summary (`summary`);
which of its runs count (`runs`); a FAILED run for a job that failed before its own run
opened (`failed`); continuing a stopped sweep (`resume`); SIGTERM to the launcher stopping
its jobs cleanly (`stop`); the private parts of Hydra and loky it needs (`internals`)."""
