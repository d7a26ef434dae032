"""hetpure: diffusion-based adversarial purification with heterogeneous noise."""

from .data import load_dataset
from .errors import CheckpointError, ConfigError, HetpureError, InputError, InputTypeError
from .gdmp import GDMPPurifier
from .mask import ActivationRecorder, binarize, energy_map
from .models import AdmEps, DiffusersEps, EpsModel, NcsnppEps, load_eps_model
from .models.checkpoint import load_state_dict_file
from .models.classifiers import as_classifier, check_logits
from .models.registry import list_classifiers, load_classifier
from .presets import list_presets, preset_purify_config
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
from .sde import DiffPurePurifier

__version__ = "0.1.0"

__all__ = [
    "ActivationRecorder",
    "AdmEps",
    "CheckpointError",
    "ConfigError",
    "DiffPurePurifier",
    "DiffusersEps",
    "EpsModel",
    "GDMPPurifier",
    "HeterogeneousPurifier",
    "HetpureError",
    "InputError",
    "InputTypeError",
    "NcsnppEps",
    "NoiseSchedule",
    "PurifiedClassifier",
    "Purifier",
    "PurifyConfig",
    "UniformPurifier",
    "__version__",
    "as_classifier",
    "binarize",
    "check_logits",
    "energy_map",
    "list_classifiers",
    "list_presets",
    "load_classifier",
    "load_dataset",
    "load_eps_model",
    "load_state_dict_file",
    "majority_vote",
    "preset_purify_config",
    "sample_heterogeneous",
    "sample_uniform",
]
