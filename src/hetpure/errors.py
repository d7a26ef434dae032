"""One exception hierarchy. Every message names the problem and the fix.

``HetpureError`` is the base (catch it to catch everything hetpure raises on purpose); the subclasses say
what kind of problem it is, and some also derive from the built-in exception a caller would expect:

- :class:`ConfigError` (also ``ValueError``): an invalid setting or argument;
- :class:`CheckpointError`: a checkpoint that is missing, unsafe to load, or does not fit the model;
- :class:`DataError`: a dataset or image file that is missing, unreadable or inconsistent;
- :class:`RecordsError`: a run folder whose records cannot be trusted, or another run writing into it;
- :class:`MissingDependencyError` (also ``ImportError``): an optional package is not installed; the
  message names the ``pip install`` extra;
- :class:`DownloadError` (also ``OSError``): a download failed (no network here is the usual cause); the
  message names the offline path.
"""

from __future__ import annotations


class HetpureError(Exception):
    """Bad input, configuration or file: the message says what is wrong and how to fix it.

    Example:
        >>> import hetpure
        >>> try:
        ...     hetpure.load_classifier("resnet-20")
        ... except hetpure.HetpureError as exc:  # catches every error hetpure raises on purpose
        ...     print(exc)
        unknown classifier 'resnet-20'. Did you mean ...
    """


class ConfigError(HetpureError, ValueError):
    """An invalid setting in a :class:`~hetpure.purify.PurifyConfig` or an evaluation config.

    Example:
        >>> import hetpure
        >>> hetpure.PurifyConfig(t_s=0.3, t_l=0.2).validate()
        Traceback (most recent call last):
            ...
        hetpure.errors.ConfigError: need 0 <= t_s <= t_l <= 1, got t_s=0.3, t_l=0.2
    """


class CheckpointError(HetpureError):
    """A checkpoint file that is missing, unsafe to load, or whose keys do not match the model.

    Example:
        >>> import hetpure
        >>> hetpure.load_state_dict_file("missing.safetensors")
        Traceback (most recent call last):
            ...
        hetpure.errors.CheckpointError: checkpoint file not found: missing.safetensors. ...
    """


class DataError(HetpureError):
    """A dataset or image file that is missing, unreadable or inconsistent."""


class RecordsError(HetpureError):
    """A run folder whose records cannot be trusted (a corrupt line, another run writing into it)."""


class MissingDependencyError(HetpureError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip command."""


class DownloadError(HetpureError, OSError):
    """A download failed; the message names the file to place by hand instead."""
