"""Image files and folders for the command-line tools: find, check, read, resize and write images.

Used by :mod:`hetpure.predict` (``hetpure purify`` / ``hetpure predict``). Images are float tensors in
[0, 1] of shape (C, H, W). Everything a user can get wrong (a missing path, a file that is not an image,
an image smaller than the model takes) is a :class:`~hetpure.errors.HetpureError` that names the file and
the fix, raised by :func:`check_images_fit` before any model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import HetpureError, describe_missing

#: Suffixes read as images (case-insensitive): PNG, JPEG and WebP, and the other formats Pillow reads well.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: Suffix of the mask files ``hetpure purify`` writes; such files are never read as inputs.
MASK_SUFFIX = ".mask.png"

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIX",
    "ImageFile",
    "check_images_fit",
    "find_images",
    "read_image",
    "resize_image",
    "write_image",
    "write_mask",
]


@dataclass(frozen=True)
class ImageFile:
    """One input image: its path, its path relative to the input (POSIX), its size and Pillow mode.

    ``size`` is (height, width); ``mode`` is Pillow's (``RGB``, ``L``, ``RGBA``, ``P``, …).
    """

    path: Path
    relative: str
    size: tuple[int, int] = (0, 0)
    mode: str = ""

    @property
    def stem(self) -> str:
        """``relative`` without its suffix: ``cat/img.jpg`` → ``cat/img`` (the name outputs are written under)."""
        return self.relative[: -len(Path(self.relative).suffix)] if Path(self.relative).suffix else self.relative


def _is_image_name(name: str) -> bool:
    low = name.lower()
    return low.endswith(IMAGE_SUFFIXES) and not low.endswith(MASK_SUFFIX) and not name.startswith(".")


def find_images(source: str | Path, exclude: str | Path | None = None) -> list[ImageFile]:
    """The image files of ``source``: the file itself, or every image under the folder (recursive, sorted).

    Hidden files and folders and ``*.mask.png`` files are skipped, as is the folder ``exclude`` (an output
    folder inside the input). Sizes and modes are not read yet (see :func:`check_images_fit`).
    """
    root = Path(source).expanduser()
    if not root.exists():
        raise HetpureError(f"input {source} {describe_missing(root)}; give an image file or a folder of images")
    if root.is_file():
        if not root.name.lower().endswith(IMAGE_SUFFIXES):
            raise HetpureError(f"input {source} is not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
        return [ImageFile(root, root.name)]
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None
    found: list[ImageFile] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or (here / d).resolve() != skip))
        for name in sorted(files):
            if _is_image_name(name):
                found.append(ImageFile(here / name, (here / name).relative_to(root).as_posix()))
    if not found:
        raise HetpureError(f"no images in {source} (looked for {', '.join(IMAGE_SUFFIXES)} files, recursively)")
    found.sort(key=lambda f: f.relative)
    return found


def _probe(file: ImageFile) -> ImageFile:
    """Open the file: its size and mode (from the header), or a clear error for a file that is not a readable
    image (the file is decoded once, so a truncated one is caught too)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file.path) as im:
            width, height = im.size
            mode = im.mode
            im.load()  # decode once: a truncated or corrupt file is named now, before any model work
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise HetpureError(
            f"cannot read image {file.path}: {exc}; fix: remove the file or re-save it as PNG or JPEG"
        ) from exc
    return ImageFile(file.path, file.relative, (height, width), mode)


def check_images_fit(files: Sequence[ImageFile], min_size: tuple[int, int] | None, what: str = "the model",
                     resize: bool = True) -> list[ImageFile]:
    """Read each file's header and refuse, before any model work, images that cannot be used.

    Args:
        files: from :func:`find_images`.
        min_size: (height, width) the model takes; an image smaller in either side is refused (upsampling
            would invent the detail the classifier looks at). ``None``: any size.
        what: the model, in words, for the messages (``classifier cifar_resnet20``).
        resize: whether images of another size may be resized to ``min_size`` (and back); when False such
            an image is refused with the fix ``--set defense.resize=true``.

    Returns:
        The files with their sizes and modes.
    """
    checked = [_probe(f) for f in files]
    if min_size is None:
        return checked
    h, w = min_size
    for f in checked:
        fh, fw = f.size
        if fh < h or fw < w:
            raise HetpureError(
                f"image {f.path} is {fh}×{fw}, smaller than the {h}×{w} that {what} takes; give images of at "
                f"least {h}×{w} (upscaling would invent the detail the classifier looks at)"
            )
        if (fh, fw) != (h, w) and not resize:
            raise HetpureError(
                f"image {f.path} is {fh}×{fw} but {what} takes {h}×{w}; fix: --set defense.resize=true to "
                f"resize it to {h}×{w} for the model and the result back to {fh}×{fw}, or resize the images"
            )
    return checked


def read_image(path: str | Path, channels: int = 3) -> tuple[Tensor, str | None]:
    """Decode an image as a float tensor (C, H, W) in [0, 1] with ``channels`` (3: RGB, 1: grey).

    Returns the tensor and a note when the file's mode was converted (``grayscale converted to RGB``,
    ``alpha channel dropped``), else None.
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise HetpureError(f"images are read with 1 or 3 channels, not {channels}")
    target = "RGB" if channels == 3 else "L"
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                note = f"{mode} image: alpha channel dropped" + (", grey converted to RGB" if mode == "LA"
                                                                  and target == "RGB" else "")
            elif mode == target:
                note = None
            elif mode in ("L", "1", "I", "I;16", "F") and target == "RGB":
                note = "grayscale converted to RGB"
            else:
                note = f"{mode} image converted to {target}"
            arr = np.asarray(im.convert(target), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise HetpureError(f"cannot read image {path}: {exc}; fix: remove the file or re-save it as PNG") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0, note


def resize_image(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize (C, H, W) or (B, C, H, W) images to ``size`` = (height, width): bilinear with antialiasing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    batch = x if x.dim() == 4 else x[None]
    out = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return out if x.dim() == 4 else out[0]


def _save_atomic(array: np.ndarray, path: Path) -> None:
    """Save a uint8 (H, W) grey or (H, W, 3) RGB array as PNG through a temporary file."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    Image.fromarray(np.ascontiguousarray(array)).save(tmp)
    os.replace(tmp, path)  # a kill leaves the old file or the new one, never half an image


def write_image(x: Tensor, path: str | Path) -> None:
    """Write an image (C, H, W) in [0, 1] as an 8-bit PNG (RGB or grey), atomically."""
    arr = (x.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    if arr.shape[0] == 1:
        _save_atomic(arr[0].numpy(), Path(path))
    else:
        _save_atomic(arr.permute(1, 2, 0).numpy(), Path(path))


def write_mask(weights: Tensor, path: str | Path, size: tuple[int, int] | None = None) -> None:
    """Write level weights (1, H, W) in [0, 1] as a grey PNG: black = t_s, white = t_l, graded levels grey.

    ``size`` = (height, width) resizes the map (nearest neighbour, so a binary mask stays binary).
    """
    w = weights.detach().float().cpu()
    if w.dim() == 2:
        w = w[None]
    if size is not None and tuple(w.shape[-2:]) != tuple(size):
        w = F.interpolate(w[None], size=tuple(size), mode="nearest")[0]
    arr = (w[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    _save_atomic(arr, Path(path))
