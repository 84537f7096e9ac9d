"""Training data: simulated data sets and manifests of measured frames.

See :mod:`~pbi_bluesky.training.datasets`.
"""
