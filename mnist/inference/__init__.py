"""What reads a trained model: loading it safely (`loading`), the public `Classifier`
(`classifier`), untrusted images decoded (`images`) and turned into MNIST-style digits
(`digits`), and the commands built on them (`predict`, `evaluate_checkpoints`, `export`).
Configured by conf/predict.yaml, evaluate.yaml and export.yaml."""
