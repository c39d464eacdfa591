"""Tiny diffusers-format text-to-video models, built offline and deterministically from a seed.

They have every part a real ModelScope/zeroscope checkpoint has (UNet3D with temporal
convolutions and temporal attention, a KL VAE with a real spatial downscale, a CLIP text encoder
with a tokenizer built locally, a scheduler config), only very narrow. Tests and the demo load
them through the same loader users use for real checkpoints; nothing touches the network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from diffusers.models.resnet import TemporalConvLayer
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from videogen.io.atomic import atomic_folder


@dataclass(frozen=True)
class TinySpec:
    """Widths of a tiny model; ``vae_blocks`` sets the VAE downscale to ``2 ** (vae_blocks - 1)``."""

    unet_channels: tuple[int, ...] = (8, 16)
    norm_groups: int = 4
    text_dim: int = 16
    attention_head_dim: int = 4
    vae_blocks: int = 3
    vae_channels: int = 8
    max_tokens: int = 16


DEFAULT_SPEC = TinySpec()

MODEL_INDEX = {
    "_class_name": "TextToVideoSDPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
"""``model_index.json`` of a diffusers text-to-video folder (UNet3D, KL VAE, CLIP text encoder, DDIM)."""


def tiny_tokenizer(max_tokens: int = DEFAULT_SPEC.max_tokens) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: one token per character, built in memory."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
    for char in bytes_to_unicode().values():
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_tokens)


def tiny_unet(spec: TinySpec = DEFAULT_SPEC, seed: int = 0) -> UNet3DConditionModel:
    """A narrow UNet3D whose temporal convolutions really mix frames.

    diffusers zero-initialises the last conv of every ``TemporalConvLayer`` (so a fresh layer is
    the identity); a tiny model for tests needs them non-zero, or frame coupling goes untested.
    """
    torch.manual_seed(seed)
    n = len(spec.unet_channels)
    unet = UNet3DConditionModel(
        block_out_channels=spec.unet_channels,
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1),
        cross_attention_dim=spec.text_dim,
        attention_head_dim=spec.attention_head_dim,
        norm_num_groups=spec.norm_groups,
    )
    for module in unet.modules():
        if isinstance(module, TemporalConvLayer):
            module.conv4[-1].reset_parameters()
    return unet.eval()


def tiny_vae(spec: TinySpec = DEFAULT_SPEC, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed + 1)
    return AutoencoderKL(
        block_out_channels=(spec.vae_channels,) * spec.vae_blocks,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * spec.vae_blocks,
        up_block_types=["UpDecoderBlock2D"] * spec.vae_blocks,
        latent_channels=4,
        sample_size=32,
        norm_num_groups=2,
    ).eval()


def tiny_text_encoder(tokenizer: CLIPTokenizer, spec: TinySpec = DEFAULT_SPEC, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed + 2)
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=spec.text_dim,
        intermediate_size=4 * spec.text_dim,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=spec.max_tokens,
        projection_dim=spec.text_dim,
    )
    return CLIPTextModel(config).eval()


def tiny_scheduler() -> DDIMScheduler:
    """The ModelScope scheduler settings (scaled-linear betas, epsilon prediction)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )


def write_tiny_model(path: str | os.PathLike, seed: int = 0, spec: TinySpec = DEFAULT_SPEC) -> Path:
    """Write a complete diffusers-format text-to-video folder to ``path`` and return it.

    The folder is assembled under a temporary name beside ``path`` and renamed into place, so a
    crash never leaves a half-written model that the loader would later trust.
    """
    with atomic_folder(path) as staging:
        tokenizer = tiny_tokenizer(spec.max_tokens)
        tiny_unet(spec, seed).save_pretrained(staging / "unet", safe_serialization=True)
        tiny_vae(spec, seed).save_pretrained(staging / "vae", safe_serialization=True)
        tiny_text_encoder(tokenizer, spec, seed).save_pretrained(staging / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(staging / "tokenizer")
        tiny_scheduler().save_pretrained(staging / "scheduler")
        (staging / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return Path(path)


def default_tiny_model_dir() -> Path:
    """Where the bundled demo model is built on first use (``$VIDEOGEN_CACHE`` or ~/.cache)."""
    root = os.environ.get("VIDEOGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "videogen")
    return Path(root) / "models" / "tiny-t2v-seed0"


def ensure_tiny_model(path: str | os.PathLike | None = None) -> Path:
    """The bundled tiny model's folder, built deterministically (seed 0) the first time."""
    target = Path(path) if path is not None else default_tiny_model_dir()
    if not (target / "model_index.json").is_file():
        write_tiny_model(target, seed=0)
    return target
