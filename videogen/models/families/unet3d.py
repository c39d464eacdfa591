"""The UNet3D family: ModelScope text-to-video, zeroscope, and this project's bundled models.

``UNet3DConditionModel`` factorises space and time: per-frame 2-D ResNets and spatial transformers, then
a ``TemporalConvLayer`` (four Conv3d stages with a ``(3, 1, 1)`` kernel) and a temporal transformer
over frames with no frame positions, so a clip of any length can attend to any other frames; a
per-frame ``AutoencoderKL``; a CLIP text encoder. The UNet may also take the caption pooled over tokens
in its time embedding (``time_cond_proj_dim``, :mod:`videogen.models.text_condition`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel

from videogen.config import ModelConfig
from videogen.models.family import ModelFamily, register_family
from videogen.models.loader import ModelBundle, load_component, load_scheduler_config, load_text_model


class UNet3DFamily(ModelFamily):
    name = "unet3d"
    description = "UNet3DConditionModel (ModelScope, zeroscope, the bundled models)"
    unet_class_names = ("UNet3DConditionModel",)

    def claims(self, unet_config: dict[str, Any], model_index: dict[str, Any] | None, cfg: ModelConfig) -> bool:
        """A UNet3D config, unless it asks for fps conditioning (a VideoCrafter2 UNet saved under the base class)."""
        return super().claims(unet_config, model_index, cfg) and not unet_config.get("fps_cond")

    def unet_class(self) -> type[UNet3DConditionModel]:
        return UNet3DConditionModel

    def load(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> ModelBundle:
        unet = load_component(cfg, "unet", self.unet_class(), "UNet", torch_dtype=dtype)
        vae = load_component(cfg, "vae", AutoencoderKL, "VAE", torch_dtype=dtype)
        text_encoder, tokenizer = load_text_model(cfg, dtype, unet.config.cross_attention_dim)
        return ModelBundle(self, unet, vae, text_encoder, tokenizer, load_scheduler_config(cfg), device, dtype)

    def build_tiny(self, folder: Path, seed: int = 0) -> Path:
        from videogen.models.tiny import write_tiny_model

        return write_tiny_model(folder, seed=seed)


FAMILY = register_family(UNet3DFamily())
