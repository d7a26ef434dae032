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
    """Bad input, configuration or file: the message says what is wrong and how to fix it."""


class ConfigError(HetpureError, ValueError):
    """An invalid setting in a :class:`~hetpure.purify.PurifyConfig` or an evaluation config."""


class CheckpointError(HetpureError):
    """A checkpoint file that is missing, unsafe to load, or whose keys do not match the model."""


class DataError(HetpureError):
    """A dataset or image file that is missing, unreadable or inconsistent."""


class RecordsError(HetpureError):
    """A run folder whose records cannot be trusted (a corrupt line, another run writing into it)."""


class MissingDependencyError(HetpureError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip command."""


class DownloadError(HetpureError, OSError):
    """A download failed; the message names the file to place by hand instead."""
