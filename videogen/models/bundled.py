"""The models that ship with videogen, by name.

* ``tiny``: a random-weight text-to-video model with every part a real checkpoint has, built on
  first use (``videogen.models.tiny``); for tests and plumbing, its videos are noise.
* ``shapes``: a small text-to-video model trained with ``videogen train configs/train_shapes.yaml``
  on the synthetic shapes world (``videogen.data.shapes``) and copied into the package's
  ``models/shapes`` folder by ``tools/bundle_model.py`` (fp16 safetensors with its TRIP fusion
  module; docs/training.md).
"""

from __future__ import annotations

from pathlib import Path

from videogen.errors import ModelLoadError

SHAPES_DIR = Path(__file__).parent / "shapes"
NAMES = ("tiny", "shapes")


def bundled_model_dir(name: str) -> Path | None:
    """The folder of bundled model ``name``, or None when ``name`` is not one (then it is a path)."""
    if name == "tiny":
        from videogen.models.tiny import ensure_tiny_model

        return ensure_tiny_model()
    if name == "shapes":
        if not (SHAPES_DIR / "model_index.json").is_file():
            raise ModelLoadError(
                f"model.path: shapes: the bundled model is missing from this install ({SHAPES_DIR}); "
                "train it with `videogen train configs/train_shapes.yaml out=out/shapes` and copy it in with "
                "`python tools/bundle_model.py out/shapes`"
            )
        return SHAPES_DIR
    return None


def model_root(path: str) -> Path:
    """``path`` as a folder: a bundled model's folder for its name, else the path itself."""
    return bundled_model_dir(path) or Path(path).expanduser()
