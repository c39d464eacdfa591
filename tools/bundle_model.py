"""Copy a trained model folder (``videogen train``'s output) into the package as a bundled model.

Only what the renderer reads is copied: ``model_index.json`` and the component folders (``unet``,
``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``, and ``trip_fusion`` and ``layout_prior`` when present); the
training state in ``train/`` stays behind. Weights must be safetensors. The destination is replaced
atomically.

    python tools/bundle_model.py out/shapes [--dst videogen/models/shapes]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videogen.io.atomic import atomic_folder  # noqa: E402

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "trip_fusion", "layout_prior")


def bundle(source: Path, destination: Path) -> dict[str, int]:
    """Copy the model in ``source`` to ``destination``; returns the bytes of each part."""
    if not (source / "model_index.json").is_file():
        raise SystemExit(f"{source}: not a model folder (no model_index.json)")
    pickled = sorted(p.name for p in source.rglob("*.bin") if "train" not in p.relative_to(source).parts)
    if pickled:
        raise SystemExit(f"{source}: pickled weights ({pickled[0]}); bundle safetensors only")
    sizes = {}
    with atomic_folder(destination) as staging:
        shutil.copy2(source / "model_index.json", staging / "model_index.json")
        sizes["model_index.json"] = (source / "model_index.json").stat().st_size
        for part in PARTS:
            if (source / part).is_dir():
                shutil.copytree(source / part, staging / part)
                sizes[part] = sum(f.stat().st_size for f in (staging / part).rglob("*") if f.is_file())
        for folder in [staging, *staging.iterdir()]:
            if folder.is_dir():
                folder.chmod(0o755)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the trained model folder")
    parser.add_argument("--dst", type=Path, default=Path("videogen/models/shapes"), help="where to put it")
    args = parser.parse_args()
    sizes = bundle(args.source, args.dst)
    for part, size in sizes.items():
        print(f"{part:18s} {size / 2**20:7.2f} MiB")
    print(f"{'total':18s} {sum(sizes.values()) / 2**20:7.2f} MiB -> {args.dst}")


if __name__ == "__main__":
    main()
