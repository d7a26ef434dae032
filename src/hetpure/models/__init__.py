"""Adapters that turn networks into ε-models or classifiers, and safe checkpoint loading."""

from .base import EpsModel
from .diffusers_eps import DiffusersEps

__all__ = ["EpsModel", "DiffusersEps"]

# --- ADM / NCSN++ networks and load_eps_model ---
from .adm import AdmConfig, AdmEps, AdmUNet  # noqa: E402
from .loading import build_eps_model, load_eps_model  # noqa: E402
from .ncsnpp import NCSNpp, NcsnppConfig, NcsnppEps  # noqa: E402

__all__ += [
    "AdmConfig",
    "AdmEps",
    "AdmUNet",
    "NCSNpp",
    "NcsnppConfig",
    "NcsnppEps",
    "build_eps_model",
    "load_eps_model",
]
