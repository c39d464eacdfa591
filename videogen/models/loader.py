"""Load a model bundle (UNet3D, VAE, CLIP text encoder + tokenizer, scheduler config) from disk.

A model is a diffusers-format folder: ``model_index.json`` plus ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/`` and ``scheduler/``. Any component can come from another folder
(``model.unet: /path``), which holds the component's files either directly or in a subfolder of
the component's name. Weights are read from safetensors only; pickled ``.bin`` weights are
refused. A component whose ``config.json`` does not describe its weights is refused naming the first
tensor that differs. A path that does not exist but looks like a hub id (``org/name``) is passed through to
diffusers, which may then use the network; nothing in the tests or the demo does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from videogen.config import ModelConfig
from videogen.errors import ModelLoadError
from videogen.models.bundled import model_root

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


@dataclass
class ModelBundle:
    """Everything one worker needs to render, on one device and in one dtype."""

    unet: UNet3DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this: the VAE's and the UNet's downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)


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


def load_bundle(cfg: ModelConfig) -> ModelBundle:
    """Load every component of ``cfg`` onto its device in its dtype, in eval mode."""
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    if dtype != torch.float32 and device.type == "cpu" and cfg.dtype == "fp16":
        raise ModelLoadError("model.dtype: fp16 is for GPUs; on the CPU use fp32 or bf16")
    folders = {c: component_dir(cfg, c) for c in COMPONENTS}
    for component in ("unet", "vae", "text_encoder"):
        _require_safetensors(folders[component], component)
    unet = _load(
        "UNet",
        folders["unet"],
        UNet3DConditionModel.from_pretrained,
        torch_dtype=dtype,
        use_safetensors=True,
        **_hub_kwargs(folders["unet"], "unet"),
    )
    vae = _load(
        "VAE",
        folders["vae"],
        AutoencoderKL.from_pretrained,
        torch_dtype=dtype,
        use_safetensors=True,
        **_hub_kwargs(folders["vae"], "vae"),
    )
    text_encoder = _load(
        "text encoder",
        folders["text_encoder"],
        CLIPTextModel.from_pretrained,
        dtype=dtype,
        use_safetensors=True,
        **_hub_kwargs(folders["text_encoder"], "text_encoder"),
    )
    tokenizer = _load(
        "tokenizer",
        folders["tokenizer"],
        CLIPTokenizer.from_pretrained,
        **_hub_kwargs(folders["tokenizer"], "tokenizer"),
    )
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise ModelLoadError(
            f"text encoder width {text_encoder.config.hidden_size} does not match the UNet's "
            f"cross_attention_dim {unet.config.cross_attention_dim}: components from different models?"
        )
    for module in (unet, vae, text_encoder):
        module.to(device).eval().requires_grad_(False)
    return ModelBundle(unet, vae, text_encoder, tokenizer, load_scheduler_config(cfg), device, dtype)
