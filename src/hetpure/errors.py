"""One exception hierarchy. Every message names the problem and the fix.

``HetpureError`` is the base (catch it to catch everything hetpure raises on purpose); the subclasses say
what kind of problem it is, and some also derive from the built-in exception a caller would expect:

- :class:`ConfigError` (also ``ValueError``): an invalid setting or argument;
- :class:`InputError` (also ``ValueError``): a bad tensor or argument value given to the Python API (a NaN
  pixel, 0–255 images, a wrong shape); :class:`InputTypeError` (also ``TypeError``) when its type is wrong
  (``trust_pickle="false"``);
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


class InputError(HetpureError, ValueError):
    """A bad tensor or argument value passed to the Python API; the message names the argument and the fix.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.checks import check_images
        >>> try:
        ...     check_images(torch.full((1, 3, 8, 8), 255.0))
        ... except ValueError as exc:  # also a hetpure.HetpureError
        ...     print(type(exc).__name__, "-", exc)
        InputError - x has values in [255, 255], outside [0, 1] (it looks like [0, 255]: divide by 255)
    """


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (for example ``trust_pickle`` that is not a boolean).

    Example:
        >>> import hetpure
        >>> try:
        ...     hetpure.load_classifier("cifar_resnet20", trust_pickle="false")
        ... except TypeError as exc:  # also a hetpure.InputError and a ValueError
        ...     print(str(exc).split(";")[0])
        trust_pickle must be the boolean True or False, got 'false' (type str)
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


def describe_missing(path: object) -> str:
    """Why ``path`` cannot be used, in words, for a message: ``does not exist``, or what is wrong with the
    symbolic link in its way (a loop, or a link to a missing target).

    Example:
        >>> from hetpure.errors import describe_missing
        >>> describe_missing("no/such/file.yaml")
        'does not exist'
    """
    import errno
    import os

    try:
        os.lstat(path)  # type: ignore[arg-type]
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "sits under a symbolic link that points back at itself (a link loop); fix or remove the link"
        return "does not exist"
    try:
        os.stat(path)  # type: ignore[arg-type]
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that points back at itself (a link loop); fix or remove the link"
        try:
            target = os.readlink(path)  # type: ignore[arg-type]
        except OSError:
            return "is a symbolic link whose target cannot be read; fix or remove the link"
        return f"is a symbolic link to {target}, which does not exist; fix or remove the link"
    return "exists but cannot be used here"
