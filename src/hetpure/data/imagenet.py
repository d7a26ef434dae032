"""ImageNet (ILSVRC-2012) from a tree of WordNet-id class folders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from ..errors import DataError
from .base import IMAGE_EXTENSIONS
from .imagefolder import ImageFolderDataset


class ImageNetDataset(ImageFolderDataset):
    """ImageNet (ILSVRC-2012) from a tree of WordNet-id class folders: ``root/val/n01440764/*.JPEG``.

    Images are resized (shorter side 256, bilinear) and centre-cropped to 224x224, the standard evaluation
    transform, with Pillow only. Labels are positions in the sorted list of the 1000 wnids, which is the
    torchvision/timm class order. A tree with fewer than 1000 class folders is refused, since sorted
    positions would then not be the standard labels, unless ``class_index`` gives the full wnid list (a
    list or a text file with one wnid per line; labels are positions in it) or ``allow_partial=True``
    (labels = positions among the folders present, only for models trained on that subset).

    ``split="test"`` means the validation set (ImageNet's test labels are not public): it uses
    ``root/val`` (or ``root/test``, or ``root`` itself when it holds the wnid folders).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        resize: int | Sequence[int] | None = 256,
        center_crop: int | Sequence[int] | None = 224,
        class_index: Sequence[str] | str | Path | None = None,
        allow_partial: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        root_p = Path(root).expanduser()
        if split == "test" and not (root_p / "test").is_dir():
            split = "val"
        if split == "val" and not (root_p / "val").is_dir() and (root_p / "validation").is_dir():
            split = "validation"
        self._class_index = self._read_class_index(class_index)
        self._allow_partial = allow_partial
        super().__init__(root_p, split, resize, center_crop, "RGB", transform, IMAGE_EXTENSIONS, "imagenet")

    @staticmethod
    def _read_class_index(class_index: Sequence[str] | str | Path | None) -> list[str] | None:
        if class_index is None:
            return None
        if isinstance(class_index, (str, Path)):
            p = Path(class_index).expanduser()
            if not p.is_file():
                raise DataError(f"class_index file {p} not found (expected one wnid per line)")
            wnids = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
        else:
            wnids = [str(w) for w in class_index]
        if len(set(wnids)) != len(wnids) or not wnids:
            raise DataError("class_index must list distinct wnids")
        return wnids

    def _label_order(self, found: list[str]) -> list[str]:
        bad = [c for c in found if not (len(c) == 9 and c[0] == "n" and c[1:].isdigit())]
        if bad:
            raise DataError(
                f"imagenet: class folders must be WordNet ids like n01440764, found {', '.join(bad[:5])} in "
                f"{self.folder if hasattr(self, 'folder') else 'the tree'}; use "
                "load_dataset('imagefolder', ...) for other trees"
            )
        if self._class_index is not None:
            unknown = [c for c in found if c not in self._class_index]
            if unknown:
                raise DataError(f"imagenet: class folders {', '.join(unknown[:5])} are not in class_index")
            return self._class_index
        if len(found) != 1000 and not self._allow_partial:
            raise DataError(
                f"imagenet: found {len(found)} wnid class folders, not 1000, so sorted positions would not "
                "be the standard ImageNet labels. Pass class_index=<file or list of the 1000 wnids> to "
                "label by the full list, or allow_partial=True for labels among the folders present"
            )
        return found
