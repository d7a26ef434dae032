"""hetpure: diffusion-based adversarial purification with heterogeneous noise."""

from .errors import CheckpointError, ConfigError, HetpureError
from .models import DiffusersEps, EpsModel
from .schedule import NoiseSchedule

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DiffusersEps",
    "EpsModel",
    "HetpureError",
    "NoiseSchedule",
    "__version__",
]
