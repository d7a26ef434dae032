"""Errors raised for bad user input. Each message names the problem and the fix."""

from __future__ import annotations


class HetpureError(ValueError):
    """Bad input, configuration or file: the message says what is wrong and how to fix it."""


class ConfigError(HetpureError):
    """An invalid setting in a :class:`~hetpure.purify.PurifyConfig` or an evaluation config."""


class CheckpointError(HetpureError):
    """A checkpoint file that is missing, unsafe to load, or whose keys do not match the model."""


class RecordsError(HetpureError):
    """A run folder whose records cannot be trusted (a corrupt line, another run writing into it)."""
