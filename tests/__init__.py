import os

# Under pytest-xdist the workers share the cores: each worker's torch gets its share of
# threads, and so do the scripts it starts (they inherit the variable), as a joblib sweep's
# jobs do. With more threads than cores, training ran several times slower (OpenMP's idle
# threads spin). Set here, before anything imports torch, which reads it once.
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))
