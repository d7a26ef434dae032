"""Adapters that turn networks into ε-models or classifiers, and safe checkpoint loading."""

from .base import EpsModel
from .diffusers_eps import DiffusersEps

__all__ = ["EpsModel", "DiffusersEps"]
