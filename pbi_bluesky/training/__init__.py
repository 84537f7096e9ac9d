"""Training data: simulated data sets and manifests of measured frames
(:mod:`~pbi_bluesky.training.datasets`)."""
