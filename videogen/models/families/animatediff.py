"""The AnimateDiff family: a Stable Diffusion 1.5 UNet with a motion adapter (Guo et al., AnimateDiff,
arXiv 2307.04725; github.com/guoyww/AnimateDiff).

diffusers' ``UNetMotionModel`` is an SD ``UNet2DConditionModel`` whose blocks gain *motion modules*
(``AnimateDiffTransformer3D``, from a ``MotionAdapter``): a GroupNorm over the frames of each pixel,
``proj_in``, then ``BasicTransformerBlock``s whose ``attn1`` and ``attn2`` are both self-attention over
frames, each fed the normalised tokens plus a sinusoidal frame position ``pe[f]`` for
``f < motion_max_seq_length`` (usually 32), and no temporal convolutions. The positions bound how
many frames one attention can see at once: exact clip parallelism renders at most that many, and
dual-scope attention gives each frame positions inside its own key set (:mod:`parallel.dual_scope`),
so any length renders. A per-frame ``AutoencoderKL`` and a CLIP text encoder, as in SD 1.5.

A model folder is either what ``AnimateDiffPipeline.save_pretrained`` writes (``unet/`` a
``UNetMotionModel``, beside ``motion_adapter/``), or a Stable Diffusion folder (``unet/`` a
``UNet2DConditionModel``) with the adapter in ``motion_adapter/`` or named by ``model.motion_adapter``;
the UNet is then assembled with ``UNetMotionModel.from_unet2d``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from videogen.config import ModelConfig
from videogen.errors import ModelLoadError
from videogen.models.family import ModelFamily, register_family
from videogen.models.layers import TemporalModules, find_temporal_modules
from videogen.models.loader import (
    ModelBundle,
    component_config,
    component_dir,
    load_component,
    load_scheduler_config,
    load_text_model,
)
from videogen.models.tiny import DEFAULT_SPEC, TinySpec

TINY_FRAME_LIMIT = 16
"""``motion_max_seq_length`` of the tiny model: small, so tests go past it with few frames."""


class MotionUNet(UNetMotionModel):
    """``UNetMotionModel`` that also takes the text states once per video, as ``UNet3DConditionModel`` does.

    ``UNetMotionModel`` reads ``encoder_hidden_states`` per frame, ``(B*F, L, D)`` (``AnimateDiffPipeline``
    repeats them); the renderer passes them per video, ``(B, L, D)``, whatever share of the frames a
    worker holds. States with one row per video are repeated over the frames of the call; per-frame
    states are used as they are. The weights and the config are ``UNetMotionModel``'s.
    """

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args, **kwargs):
        frames = sample.shape[2]
        if frames > 1 and encoder_hidden_states.shape[0] == sample.shape[0]:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(frames, dim=0)
        return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)


class AnimateDiffFamily(ModelFamily):
    name = "animatediff"
    description = "UNetMotionModel: Stable Diffusion 1.5 with an AnimateDiff motion adapter"
    unet_class_names = ("UNetMotionModel", "MotionUNet")
    temporal_halo = 0  # the motion modules are temporal attention only

    def claims(self, unet_config: dict[str, Any], model_index: dict[str, Any] | None, cfg: ModelConfig) -> bool:
        """A ``UNetMotionModel``, or a ``UNet2DConditionModel`` with a motion adapter beside it (named in
        ``model_index.json`` or by ``model.motion_adapter``)."""
        cls = unet_config.get("_class_name")
        if cls in self.unet_class_names:
            return True
        has_adapter = cfg.motion_adapter is not None or "motion_adapter" in (model_index or {})
        return cls == "UNet2DConditionModel" and has_adapter

    def unet_class(self) -> type[MotionUNet]:
        return MotionUNet

    def meta_unet(self, unet_config: dict[str, Any]) -> nn.Module:
        """The motion UNet on the meta device; from a ``UNet2DConditionModel`` config, with the default
        adapter's motion modules (shapes for planning only: the adapter's own config is read at load)."""
        if unet_config.get("_class_name") != "UNet2DConditionModel":
            return super().meta_unet(unet_config)
        with torch.device("meta"):
            return MotionUNet.from_unet2d(UNet2DConditionModel.from_config(unet_config), load_weights=False)

    def frame_limit(self, unet_config: dict[str, Any]) -> int | None:
        """``motion_max_seq_length``; None for a ``UNet2DConditionModel`` config, whose adapter sets it (the
        loaded model is checked)."""
        limit = unet_config.get("motion_max_seq_length")
        return int(limit) if limit is not None else None

    def configured_frame_limit(self, cfg: ModelConfig) -> int | None:
        """The UNet's ``motion_max_seq_length``, or the motion adapter's when the UNet is a plain SD UNet."""
        limit = super().configured_frame_limit(cfg)
        if limit is not None:
            return limit
        try:
            adapter = component_config(cfg, "motion_adapter")
        except ModelLoadError:
            return None  # loading says what is missing
        return None if adapter is None else self.frame_limit(adapter)

    def load(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> ModelBundle:
        unet_config = component_config(cfg, "unet")
        is_motion = unet_config is None or unet_config.get("_class_name") in self.unet_class_names
        if is_motion:
            if cfg.motion_adapter is not None:
                raise ModelLoadError(
                    f"model.motion_adapter: the UNet in {component_dir(cfg, 'unet')} is a UNetMotionModel, which "
                    "holds its motion modules already; set model.motion_adapter=null, or point model.unet at a "
                    "Stable Diffusion UNet2DConditionModel to pair with the adapter"
                )
            unet = load_component(cfg, "unet", MotionUNet, "UNet", torch_dtype=dtype)
        else:
            unet = self._assemble(cfg, dtype)
        vae = load_component(cfg, "vae", AutoencoderKL, "VAE", torch_dtype=dtype)
        text_encoder, tokenizer = load_text_model(cfg, dtype, unet.config.cross_attention_dim)
        return ModelBundle(self, unet, vae, text_encoder, tokenizer, load_scheduler_config(cfg), device, dtype)

    def _assemble(self, cfg: ModelConfig, dtype: torch.dtype) -> MotionUNet:
        """``UNetMotionModel.from_unet2d`` of the SD UNet and the motion adapter."""
        try:
            component_dir(cfg, "motion_adapter")
        except ModelLoadError as error:
            raise ModelLoadError(
                f"model.motion_adapter: the UNet in {component_dir(cfg, 'unet')} is a Stable Diffusion "
                "UNet2DConditionModel, which needs a MotionAdapter: set model.motion_adapter to its folder, or put "
                f"it in motion_adapter/ of model.path ({error})"
            ) from None
        unet2d = load_component(cfg, "unet", UNet2DConditionModel, "UNet", torch_dtype=dtype)
        adapter = load_component(cfg, "motion_adapter", MotionAdapter, "motion adapter", torch_dtype=dtype)
        try:
            return MotionUNet.from_unet2d(unet2d, adapter)
        except (ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0]
            raise ModelLoadError(f"model.motion_adapter: the adapter does not fit the UNet: {first}") from None

    def temporal_modules(self, unet: nn.Module) -> TemporalModules:
        """The motion modules; each transformer block's sinusoidal ``pos_embed`` holds ``frame_limit`` positions."""
        return find_temporal_modules(
            unet,
            conv_classes=(),
            transformer_classes=(AnimateDiffTransformer3D,),
            position_limit=self.frame_limit(dict(unet.config)),
        )

    def build_tiny(self, folder: Path, seed: int = 0) -> Path:
        return write_tiny_animatediff(folder, seed)


def tiny_motion_parts(
    spec: TinySpec = DEFAULT_SPEC, seed: int = 0, frame_limit: int = TINY_FRAME_LIMIT
) -> tuple[UNet2DConditionModel, MotionAdapter]:
    """A narrow SD UNet and a motion adapter of the same shape (random weights, deterministic in ``seed``)."""
    n = len(spec.unet_channels)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=spec.unet_channels,
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=spec.text_dim,
        attention_head_dim=spec.attention_head_dim,
        norm_num_groups=spec.norm_groups,
    ).eval()
    torch.manual_seed(seed + 3)
    adapter = MotionAdapter(
        block_out_channels=spec.unet_channels,
        motion_layers_per_block=1,
        motion_norm_num_groups=spec.norm_groups,
        motion_num_attention_heads=2,
        motion_max_seq_length=frame_limit,
    ).eval()
    return unet, adapter


LAYOUTS = ("pipeline", "unet2d", "sd")


def write_tiny_animatediff(
    path: str | Path,
    seed: int = 0,
    spec: TinySpec = DEFAULT_SPEC,
    frame_limit: int = TINY_FRAME_LIMIT,
    layout: str = "pipeline",
) -> Path:
    """Write a tiny AnimateDiff model to ``path``; the same weights in every ``layout``:

    - ``"pipeline"``: what ``AnimateDiffPipeline.save_pretrained`` writes (``unet/`` a ``UNetMotionModel``,
      ``motion_adapter/``, ``model_index.json``);
    - ``"unet2d"``: the same folder with ``unet/`` the Stable Diffusion ``UNet2DConditionModel``;
    - ``"sd"``: a Stable Diffusion folder without the adapter (write it with
      :func:`write_tiny_motion_adapter` and name it by ``model.motion_adapter``).

    The VAE, text encoder, tokenizer and scheduler are :mod:`videogen.models.tiny`'s.
    """
    from videogen.io.atomic import atomic_folder
    from videogen.models.tiny import tiny_scheduler, tiny_text_encoder, tiny_tokenizer, tiny_vae

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    with atomic_folder(path) as staging:
        unet, adapter = tiny_motion_parts(spec, seed, frame_limit)
        tokenizer = tiny_tokenizer(spec.max_tokens)
        parts = {"unet": unet, "vae": tiny_vae(spec, seed), "text_encoder": tiny_text_encoder(tokenizer, spec, seed)}
        if layout == "pipeline":
            pipe = AnimateDiffPipeline(tokenizer=tokenizer, motion_adapter=adapter, scheduler=tiny_scheduler(), **parts)
            pipe.save_pretrained(staging, safe_serialization=True)
        else:
            if layout == "unet2d":
                parts["motion_adapter"] = adapter
            for name, part in parts.items():
                part.save_pretrained(staging / name, safe_serialization=True)
            tokenizer.save_pretrained(staging / "tokenizer")
            tiny_scheduler().save_pretrained(staging / "scheduler")
            (staging / "model_index.json").write_text(json.dumps(_model_index(layout), indent=2))
    return Path(path)


def _model_index(layout: str) -> dict[str, Any]:
    index: dict[str, Any] = {
        "_class_name": "AnimateDiffPipeline" if layout == "unet2d" else "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if layout == "unet2d":
        index["motion_adapter"] = ["diffusers", "MotionAdapter"]
    return index


def write_tiny_motion_adapter(
    path: str | Path, seed: int = 0, spec: TinySpec = DEFAULT_SPEC, frame_limit: int = TINY_FRAME_LIMIT
) -> Path:
    """The motion adapter of :func:`write_tiny_animatediff` alone, as ``MotionAdapter.save_pretrained`` writes it."""
    from videogen.io.atomic import atomic_folder

    with atomic_folder(path) as staging:
        tiny_motion_parts(spec, seed, frame_limit)[1].save_pretrained(staging, safe_serialization=True)
    return Path(path)


FAMILY = register_family(AnimateDiffFamily())
