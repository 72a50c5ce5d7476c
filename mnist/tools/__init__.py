"""Side commands, apart from the flow of a run: the pipeline benchmark (`benchmark`),
photo-like renderings of test digits (`photos`) and their evaluation (`photo_eval`), and
the reproduction check of a logged run (`reproduce`)."""
