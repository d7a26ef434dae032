"""hetpure: diffusion-based adversarial purification with heterogeneous noise."""

from .errors import CheckpointError, ConfigError, HetpureError
from .mask import ActivationRecorder, binarize, energy_map
from .models import DiffusersEps, EpsModel
from .purify import (
    HeterogeneousPurifier,
    PurifiedClassifier,
    Purifier,
    PurifyConfig,
    UniformPurifier,
    majority_vote,
    sample_heterogeneous,
    sample_uniform,
)
from .schedule import NoiseSchedule

__version__ = "0.1.0"

__all__ = [
    "ActivationRecorder",
    "HeterogeneousPurifier",
    "PurifiedClassifier",
    "Purifier",
    "PurifyConfig",
    "UniformPurifier",
    "binarize",
    "energy_map",
    "majority_vote",
    "sample_heterogeneous",
    "sample_uniform",
    "CheckpointError",
    "ConfigError",
    "DiffusersEps",
    "EpsModel",
    "HetpureError",
    "NoiseSchedule",
    "__version__",
]
