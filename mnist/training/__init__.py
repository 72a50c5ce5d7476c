"""Stage 3 of a run, the training: the job that wires the stages (`job`, only
scripts/train.py imports it), the loop (`loop`), evaluation (`evaluation`), what a run
trains (`build`), exact resume (`resume`, `checkpoint`, `signals`), and the hardware and
optimisation choices (`device`, `optim`). Configured by conf/trainer, conf/optimizer,
conf/scheduler and conf/device."""
