"""Load a model bundle (UNet, VAE, text encoder + tokenizer, scheduler config) from disk, as its family says.

A model is a diffusers-format folder: ``model_index.json`` plus ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/`` and ``scheduler/`` (and whatever else its family needs); its
:class:`~videogen.models.family.ModelFamily` is ``model.family`` or the one that claims its UNet. Any
component can come from another folder (``model.unet: /path``), which holds the component's files
either directly or in a subfolder of the component's name. Weights are read from safetensors only;
pickled ``.bin`` weights are refused. A component whose ``config.json`` does not describe its weights
is refused naming the first tensor that differs. A path that does not exist but looks like a hub id
(``org/name``) is passed through to diffusers, which may then use the network; nothing in the tests or
the demo does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from videogen.config import ModelConfig
from videogen.errors import ModelLoadError
from videogen.models.bundled import model_root
from videogen.models.family import LatentGeometry, ModelFamily, detect_family, family_named, read_model_index

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
"""The components every model has."""
OPTIONAL_COMPONENTS = ("motion_adapter",)
"""Components only some families read (``model.motion_adapter``: AnimateDiff's adapter)."""
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


@dataclass
class ModelBundle:
    """Everything one worker needs to render, on one device and in one dtype.

    ``family`` says how to call and split the UNet; ``extras`` holds components only some families have
    (by component name).
    """

    family: ModelFamily
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: CLIPTextModel | None
    tokenizer: CLIPTokenizer | None
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def geometry(self) -> LatentGeometry:
        return self.family.geometry(dict(self.unet.config), dict(self.vae.config))

    @property
    def vae_scale_factor(self) -> int:
        return self.geometry.spatial_factor

    @property
    def latent_channels(self) -> int:
        return self.geometry.channels

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this: the VAE's and the UNet's downsampling."""
        return self.geometry.size_multiple


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelLoadError(f"model.device: {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device: {name} asked for, but this machine has no usable CUDA device")
    return device


def model_components(cfg: ModelConfig) -> tuple[str, ...]:
    """The components to look for before loading: its family's (every text-to-video model's by default),
    and the optional ones ``cfg`` names."""
    try:
        own = model_family(cfg).components or COMPONENTS
    except ModelLoadError:
        own = COMPONENTS  # looking for each folder says what is missing
    return own + tuple(name for name in OPTIONAL_COMPONENTS if getattr(cfg, name) is not None)


def _has_component_files(folder: Path, component: str) -> bool:
    if component == "tokenizer":
        return any((folder / name).is_file() for name in _TOKENIZER_FILES)
    if component == "scheduler":
        return (folder / "scheduler_config.json").is_file()
    return (folder / "config.json").is_file()


def component_dir(cfg: ModelConfig, component: str) -> Path | str:
    """The folder (or hub id) that holds ``component``, or a ModelLoadError saying what is missing."""
    override = getattr(cfg, component)
    key = f"model.{component}" if override else "model.path"
    base = override or cfg.path
    root = model_root(base)
    if not root.exists():
        if _HUB_ID.match(str(base)):
            return str(base)
        raise ModelLoadError(f"{key}: model folder {base} does not exist")
    if not root.is_dir():
        raise ModelLoadError(f"{key}: {base} is a file; a model is a diffusers-format folder")
    for candidate in (root / component, root):
        if _has_component_files(candidate, component):
            return candidate
    expected = (
        "tokenizer.json or vocab.json"
        if component == "tokenizer"
        else ("scheduler_config.json" if component == "scheduler" else "config.json")
    )
    raise ModelLoadError(f"{key}: {root} has no {component}/ folder with {expected}")


def _require_safetensors(folder: Path | str, component: str) -> None:
    if isinstance(folder, str):
        return
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    if pickled:
        raise ModelLoadError(
            f"{folder}: {component} weights are pickled ({pickled[0]}); videogen loads safetensors only. "
            "Convert them once with save_pretrained(..., safe_serialization=True)."
        )
    raise ModelLoadError(f"{folder}: no {component} weights (*.safetensors) found")


def _expected_shapes(cls: type, folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model ``folder``'s config.json describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        if hasattr(cls, "load_config"):  # diffusers
            model = cls.from_config(cls.load_config(str(folder)))
        else:  # transformers
            model = cls(cls.config_class.from_pretrained(str(folder)))
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _stored_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shapes.setdefault(name, tuple(handle.get_slice(name).get_shape()))
    return shapes


def config_mismatch(cls: type, folder: Path) -> str | None:
    """The first tensor (in the model's order) where ``folder``'s config.json and its weights disagree, in
    words, or None when they agree (or cannot be compared)."""
    try:
        expected, stored = _expected_shapes(cls, folder), _stored_shapes(folder)
    except Exception:  # a diagnosis only: the load error is reported instead
        return None
    for name, shape in expected.items():
        if name not in stored:
            return f"{name} {list(shape)} is not in the weights"
        if stored[name] != shape:
            return f"{name} is {list(stored[name])} in the weights but {list(shape)} by config.json"
    extra = next((name for name in stored if name not in expected), None)
    return f"{extra} in the weights has no place in the model config.json describes" if extra else None


def _load(what: str, folder: Path | str, fn, **kwargs):
    try:
        return fn(str(folder), **kwargs)
    except (OSError, ValueError, json.JSONDecodeError, KeyError, TypeError, RuntimeError) as error:
        cls = getattr(fn, "__self__", None)
        if isinstance(folder, Path) and isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            mismatch = config_mismatch(cls, folder)
            if mismatch is not None:
                raise ModelLoadError(
                    f"{folder}: the {what}'s config.json does not match its weights: {mismatch}"
                ) from None
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{folder}: could not load the {what}: {first}") from None


def component_config(cfg: ModelConfig, component: str) -> dict[str, Any] | None:
    """``component``'s config.json as a dict, read without loading weights; None for a hub id."""
    folder = component_dir(cfg, component)
    if isinstance(folder, str):
        return None
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path}: not a readable JSON config ({error})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return config


def _hub_kwargs(folder: Path | str, component: str) -> dict[str, Any]:
    return {"subfolder": component} if isinstance(folder, str) else {}


def load_scheduler_config(cfg: ModelConfig) -> dict[str, Any]:
    folder = component_dir(cfg, "scheduler")
    if isinstance(folder, str):
        from diffusers import DDIMScheduler

        return dict(DDIMScheduler.load_config(folder, subfolder="scheduler"))
    path = folder / "scheduler_config.json"
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return config


def load_component(cfg: ModelConfig, component: str, cls: type, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on ``component``'s folder, safetensors only, with clear errors.

    ``kwargs`` go to ``from_pretrained`` (``torch_dtype`` for diffusers models, ``dtype`` for transformers).
    """
    folder = component_dir(cfg, component)
    if issubclass(cls, torch.nn.Module):
        _require_safetensors(folder, component)
        kwargs = {**kwargs, "use_safetensors": True}
    return _load(what, folder, cls.from_pretrained, **kwargs, **_hub_kwargs(folder, component))


def load_text_model(cfg: ModelConfig, dtype: torch.dtype, width: int) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """The CLIP text encoder and tokenizer, checked against the UNet's cross-attention ``width``."""
    text_encoder = load_component(cfg, "text_encoder", CLIPTextModel, "text encoder", dtype=dtype)
    tokenizer = load_component(cfg, "tokenizer", CLIPTokenizer, "tokenizer")
    if text_encoder.config.hidden_size != width:
        raise ModelLoadError(
            f"text encoder width {text_encoder.config.hidden_size} does not match the UNet's "
            f"cross_attention_dim {width}: components from different models?"
        )
    return text_encoder, tokenizer


def model_family(cfg: ModelConfig) -> ModelFamily:
    """The family of ``cfg``'s model: ``model.family``, or with ``auto`` the one that claims its UNet."""
    if cfg.family != "auto":
        return family_named(cfg.family)
    folder = component_dir(cfg, "unet")
    root = model_root(cfg.path)
    index = read_model_index(root) if root.is_dir() else None
    return detect_family(component_config(cfg, "unet"), index, str(folder), cfg)


def placed(bundle: ModelBundle) -> ModelBundle:
    """Move every module of ``bundle`` to its device, in eval mode and frozen."""
    for module in (bundle.unet, bundle.vae, bundle.text_encoder, *bundle.extras.values()):
        if isinstance(module, torch.nn.Module):
            module.to(bundle.device).eval().requires_grad_(False)
    return bundle


def load_bundle(cfg: ModelConfig) -> ModelBundle:
    """Load every component of ``cfg``'s model onto its device in its dtype, in eval mode, as its family says."""
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    if dtype != torch.float32 and device.type == "cpu" and cfg.dtype == "fp16":
        raise ModelLoadError("model.dtype: fp16 is for GPUs; on the CPU use fp32 or bf16")
    return placed(model_family(cfg).load(cfg, device, dtype))
