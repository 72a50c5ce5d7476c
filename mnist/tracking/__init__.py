"""Everything that talks to MLflow: where the store is (`store`), a job's run and what it
logs (`runs`, `listener`), a sweep's runs (`sweep_runs`), what commands read back
(`queries`), the registry, and optional TensorBoard files. Configured by conf/logger."""
