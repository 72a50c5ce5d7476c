"""Side commands: the pipeline and start-up benchmarks, photo evaluation, reproduction."""
