"""Stage 5 of a run, the reports: a test evaluation's files, pictures, and the comparison of
many runs (`compare` reads them from MLflow, `table` renders them)."""
