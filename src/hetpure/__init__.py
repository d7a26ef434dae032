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

# --- ADM / NCSN++ ε-models and load_eps_model (issue 5) ---
from .models import AdmEps, NcsnppEps, load_eps_model  # noqa: E402

__all__ += ["AdmEps", "NcsnppEps", "load_eps_model"]

# --- datasets, classifiers and safe checkpoint loading (issue 10) ---
from .data import load_dataset  # noqa: E402
from .models.checkpoint import load_state_dict_file  # noqa: E402
from .models.classifiers import as_classifier, check_logits  # noqa: E402
from .models.registry import list_classifiers, load_classifier  # noqa: E402

__all__ += [
    "as_classifier",
    "check_logits",
    "list_classifiers",
    "load_classifier",
    "load_dataset",
    "load_state_dict_file",
]
