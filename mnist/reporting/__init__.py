"""Stage 5 of a run, the reports: per-class metrics (`metrics`), pictures (`plots`), the
files of a test evaluation (`reports`), and the comparison of many runs (`compare` reads
them from MLflow, `table` renders them). Configured by conf/compare.yaml."""
