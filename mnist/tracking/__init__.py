"""Everything that talks to MLflow, configured by conf/logger."""
