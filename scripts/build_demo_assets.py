"""Copy freshly trained demo models into the package (src/hetpure/assets/demo) and pick the held-out digits.

    python scripts/build_demo_assets.py --ddpm RUN/ddpm --classifier RUN/clf [--n 64]

The held-out digits are a seeded random draw (seed 0) from the mnist5k TEST split, which neither model saw
in training. Checkpoints and resume state are not copied, only the final (EMA) weights and their records.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from hetpure.data import load_dataset

ASSETS = Path(__file__).resolve().parents[1] / "src/hetpure/assets/demo"
DDPM_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "training.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm", type=Path, required=True, help="output folder of hetpure train-diffusion")
    parser.add_argument("--classifier", type=Path, required=True, help="output folder of hetpure train-classifier")
    parser.add_argument("--n", type=int, default=64)
    args = parser.parse_args()
    (ASSETS / "ddpm").mkdir(parents=True, exist_ok=True)
    for name in DDPM_FILES:
        shutil.copy2(args.ddpm / name, ASSETS / "ddpm" / name)
    shutil.copy2(args.classifier / "model.safetensors", ASSETS / "classifier.safetensors")
    shutil.copy2(args.classifier / "config.json", ASSETS / "classifier.json")
    test = load_dataset("mnist5k", split="test")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: args.n]
    images = torch.stack([torch.as_tensor(test[int(i)][0]) for i in order])
    labels = torch.tensor([int(test[int(i)][1]) for i in order])
    indices = torch.tensor([int(test.indices[int(i)]) for i in order])
    save_file({"images": (images * 255).round().to(torch.uint8).contiguous(), "labels": labels, "indices": indices},
              str(ASSETS / "heldout_digits.safetensors"))
    sizes = {p.name: p.stat().st_size for p in ASSETS.rglob("*") if p.is_file()}
    print(json.dumps({"assets": str(ASSETS), "bytes": sum(sizes.values()), "files": sizes}, indent=2))


if __name__ == "__main__":
    main()
