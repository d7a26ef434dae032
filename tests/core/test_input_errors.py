"""Bad tensors and arguments given to the purifier API: an ``InputError`` (a ``HetpureError`` and a ``ValueError``)
naming the argument and the fix, before any model work; a classifier whose logits are not finite is refused
instead of voting class 0 for every image; the logit-shape message counts what it was given."""

from __future__ import annotations

import pytest
import torch
from conftest import images
from torch import Tensor, nn

import hetpure
from hetpure.errors import HetpureError, InputError, InputTypeError


def purifier(eps: hetpure.EpsModel, clf: nn.Module, **cfg: object) -> hetpure.UniformPurifier:
    return hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.2, ddim_steps=10, runs=3, **cfg))


BAD_IMAGES = [
    ("nan pixel", lambda: images(2).index_put_((torch.tensor([0]),), torch.tensor(float("nan"))),
     r"x contains NaN or inf values"),
    ("0-255 range", lambda: images(2) * 255, r"outside \[0, 1\] \(it looks like \[0, 255\]: divide by 255\)"),
    ("[-1, 1] range", lambda: images(2) * 2 - 1, r"it looks like \[-1, 1\]: map it with \(x \+ 1\) / 2"),
    ("one image", lambda: images(1)[0], r"expected a batch \(B, C, H, W\); use x\.unsqueeze\(0\)"),
    ("5-D", lambda: images(2)[None], r"x must have shape \(B, C, H, W\)"),
    ("wrong channels", lambda: images(2)[:, :1], r"x has 1 channels but the diffusion model expects 3"),
    ("integer", lambda: (images(2) * 255).to(torch.uint8), r"dtype torch\.uint8.*x\.float\(\) / 255"),
    ("meta", lambda: torch.empty(2, 3, 16, 16, device="meta"), r"x is a meta tensor \(a shape without data\)"),
    ("empty", lambda: images(2)[:0], r"x is an empty batch"),
]


@pytest.mark.parametrize(("what", "make", "message"), BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_bad_images_are_an_input_error(eps: hetpure.EpsModel, clf: nn.Module, what: str, make, message: str) -> None:
    pur = purifier(eps, clf)
    for call in (pur.purify, pur.predict, pur.vote_counts):
        with pytest.raises(InputError, match=message) as info:
            call(make())
        assert isinstance(info.value, ValueError) and isinstance(info.value, HetpureError), what


def test_a_non_tensor_is_an_input_type_error(eps: hetpure.EpsModel, clf: nn.Module) -> None:
    with pytest.raises(InputTypeError, match="x must be a torch.Tensor of images, got list") as info:
        purifier(eps, clf).purify([[0.5]])
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(("mask", "message"), [
    (torch.ones(2, 1, 8, 8), r"mask must have shape \(2, 1, 16, 16\), got \(2, 1, 8, 8\)"),
    (torch.ones(3, 1, 16, 16), r"mask must have shape \(2, 1, 16, 16\), got \(3, 1, 16, 16\)"),
    (torch.full((2, 1, 16, 16), 2.0), r"mask values must lie in \[0, 1\]"),
    (torch.empty(2, 1, 16, 16, device="meta"), r"mask is a meta tensor"),
])
def test_a_bad_mask_is_an_input_error(eps: hetpure.EpsModel, clf: nn.Module, mask: Tensor, message: str) -> None:
    pur = hetpure.HeterogeneousPurifier(eps, clf, hetpure.PurifyConfig(t_s=0.1, t_l=0.2, ddim_steps=10, runs=2))
    with pytest.raises(InputError, match=message):
        pur.purify(images(2), mask=mask)


def test_a_wrong_image_size_is_an_input_error(eps: hetpure.EpsModel, clf: nn.Module) -> None:
    with pytest.raises(InputError, match=r"diffusion model works at 16x16.*PurifyConfig\(resize=True\)"):
        purifier(eps, clf).purify(images(2, size=12))


class _Constant(nn.Module):
    """A classifier whose logits are ``value`` everywhere (one class a little higher)."""

    mask_layers = ["body"]

    def __init__(self, value: float, rows: int | None = None) -> None:
        super().__init__()
        self.body = nn.Identity()
        self.value, self.rows = value, rows

    def forward(self, x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], 10)
        out[:, 7] = 1.0
        out[0, 0] = self.value
        return out if self.rows is None else out[: self.rows]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_logits_are_refused_not_voted_class_0(eps: hetpure.EpsModel, value: float) -> None:
    pur = purifier(eps, _Constant(value))
    for call in (pur.predict, pur.vote_counts, pur.run_labels):
        with pytest.raises(HetpureError, match=r"the classifier returned NaN or infinite logits for .*purified images"):
            call(images(2))


def test_finite_logits_still_vote(eps: hetpure.EpsModel) -> None:
    """Control: the same classifier with a finite value votes class 7 for both images."""
    assert purifier(eps, _Constant(0.5)).predict(images(2)).tolist() == [7, 7]


def test_the_logit_shape_error_counts_runs_times_images(eps: hetpure.EpsModel) -> None:
    pur = purifier(eps, _Constant(0.0, rows=1))  # 3 runs of 2 images in one chunk: 6 rows expected, 1 returned
    with pytest.raises(HetpureError) as info:
        pur.predict(images(2))
    msg = str(info.value)
    assert "N = 6 purified images (part of 3 runs × 2 images)" in msg and "got (1, 10)" in msg, msg
    assert "B = 6" not in msg
