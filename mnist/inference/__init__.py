"""What reads a trained model: loading, the public Classifier, images turned into MNIST-style
digits, and the predict, evaluate and export commands."""
