"""Anomaly models.

Triplet-loss CNN embedding, recipe-aware one-class scoring, calibrated verdicts, physical
attributions, and pickle-free model bundles.
"""

from pbi_bluesky.models.attribution import DescriptorPopulation, exact_shapley
from pbi_bluesky.models.baselines import BASELINES, Scorer, make_baseline
from pbi_bluesky.models.bundle import BundleError, ensure_can_flag, load_bundle, save_bundle
from pbi_bluesky.models.calibration import benjamini_hochberg, conformal_p_values, hyperscore
from pbi_bluesky.models.conformal import Calibration, CalibrationError, plan_calibration
from pbi_bluesky.models.descriptors import DESCRIPTORS, fit_descriptors
from pbi_bluesky.models.detector import AnomalyDetector
from pbi_bluesky.models.network import EmbeddingCNN, NetworkConfig
from pbi_bluesky.models.ocsvm import RBFOneClass
from pbi_bluesky.models.paper import PaperPipeline
from pbi_bluesky.models.representation import CoverageError, FeatureScaler, QGrid
from pbi_bluesky.models.settings import TrainingConfig, Verdict
from pbi_bluesky.models.triplet import triplet_loss

__all__ = [
    "BASELINES",
    "DESCRIPTORS",
    "AnomalyDetector",
    "BundleError",
    "Calibration",
    "CalibrationError",
    "CoverageError",
    "DescriptorPopulation",
    "EmbeddingCNN",
    "FeatureScaler",
    "NetworkConfig",
    "QGrid",
    "RBFOneClass",
    "Scorer",
    "TrainingConfig",
    "Verdict",
    "benjamini_hochberg",
    "conformal_p_values",
    "ensure_can_flag",
    "exact_shapley",
    "fit_descriptors",
    "hyperscore",
    "load_bundle",
    "PaperPipeline",
    "make_baseline",
    "plan_calibration",
    "save_bundle",
    "triplet_loss",
]
