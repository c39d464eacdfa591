"""The VideoCrafter2 family: a UNet3D whose time embedding also carries the frame rate.

VideoCrafter2 (Chen et al., "VideoCrafter2: Overcoming Data Limitations for High-Quality Video
Diffusion Models", arXiv 2401.09047) in diffusers form is a ``UNet3DConditionModel`` with two more
modules, as the public conversion ``adamdad/videocrafterv2_diffusers`` and Video-Infinity
(arXiv 2406.16260, github.com/Yuanshi9815/Video-Infinity ``src/video_crafter.py``) define them:
``fps_proj`` (sinusoidal features, like ``time_proj``) and ``fps_embedding`` (an MLP, like
``time_embedding``), behind the config key ``fps_cond``. For a timestep ``t`` and a frame rate ``r``
the UNet's embedding is

    ``emb = time_embedding(time_proj(t)) + fps_embedding(fps_proj(r))``

added once per batch item before it is repeated over frames, so every ResNet block sees the rate.
Video-Infinity adds it by setting ``unet.time_embedding.post_act``, which diffusers'
``TimestepEmbedding.forward`` calls at its end; :class:`UNetVideoCrafter` does the same inside its own
``forward``, so the rate reaches the UNet the same way from this project's loop (the ``fps`` keyword,
fed from ``video.condition_fps``, or ``video.fps`` when that is null) and from diffusers'
``TextToVideoSDPipeline`` (which passes no rate, so :attr:`UNetVideoCrafter.fps` is used). Video-Infinity
conditions on 24 and writes its file at 8: ``video.condition_fps: 24`` with ``video.fps: 8``.

The other components are zeroscope's (``cerspense/zeroscope_v2_576w``): a per-frame ``AutoencoderKL``,
an OpenCLIP text encoder in ``CLIPTextModel`` form and its tokenizer, and the scheduler config, which
videogen's loader takes from wherever ``model.vae``, ``model.text_encoder``, ``model.tokenizer`` and
``model.scheduler`` point. The usual sampler is SDE-DPM-Solver++ with Karras sigmas (``dpmpp_sde``).
Temporal layers are UNet3D's (no frame positions), so clip and patch parallelism apply unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet3DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput

from videogen.config import JobConfig, ModelConfig
from videogen.errors import ConfigError, ModelLoadError
from videogen.io.atomic import atomic_folder
from videogen.models.families.unet3d import UNet3DFamily
from videogen.models.family import register_family
from videogen.models.loader import component_config
from videogen.models.tiny import (
    DEFAULT_SPEC,
    MODEL_INDEX,
    TinySpec,
    tiny_scheduler,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
)

DEFAULT_FPS = 24.0
"""The rate VideoCrafter2 is sampled at in its own and Video-Infinity's configurations."""


class UNetVideoCrafter(UNet3DConditionModel):
    """``UNet3DConditionModel`` plus VideoCrafter2's frame-rate embedding (``fps_cond``).

    ``forward`` takes the rate as ``fps``; a call without it (diffusers' pipelines) uses :attr:`fps`.
    With ``fps_cond: false`` it is a plain UNet3D and takes no rate.
    """

    fps: float = DEFAULT_FPS
    """The rate of calls that pass none (set it on an instance to condition diffusers' pipelines)."""

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        num_attention_heads: int | tuple[int] | None = None,
        time_cond_proj_dim: int | None = None,
        fps_cond: bool = True,
    ):
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        if fps_cond:
            width = block_out_channels[0]
            self.fps_proj = Timesteps(width, True, 0)
            self.fps_embedding = TimestepEmbedding(width, 4 * width, act_fn=act_fn)

    def fps_embedding_of(self, fps: float, device: torch.device) -> torch.Tensor:
        """``fps_embedding(fps_proj(r))``, shaped ``(1, 4 * block_out_channels[0])``."""
        rate = torch.tensor([float(fps)], device=device)
        return self.fps_embedding(self.fps_proj(rate).to(self.dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        fps: float | None = None,
        **kwargs: Any,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """UNet3D's forward with ``fps_embedding(fps_proj(fps))`` added to the time embedding."""
        if not self.config.fps_cond:
            if fps is not None:
                raise ValueError("this UNetVideoCrafter has fps_cond: false and takes no fps")
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        added = self.fps_embedding_of(self.fps if fps is None else fps, sample.device)
        embedding = self.time_embedding
        previous = embedding.post_act
        embedding.post_act = lambda emb: (emb if previous is None else previous(emb)) + added
        try:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        finally:
            embedding.post_act = previous


class VideoCrafter2Family(UNet3DFamily):
    name = "videocrafter2"
    description = "UNetVideoCrafter: VideoCrafter2 in diffusers form (UNet3D + fps embedding), zeroscope's VAE and text"
    unet_class_names = ("UNetVideoCrafter",)
    default_sampler = "dpmpp_sde"

    def claims(self, unet_config: dict[str, Any], model_index: dict[str, Any] | None, cfg: ModelConfig) -> bool:
        return unet_config.get("_class_name") in self.unet_class_names or bool(unet_config.get("fps_cond"))

    def unet_class(self) -> type[UNetVideoCrafter]:
        return UNetVideoCrafter

    def job_problems(self, job: JobConfig) -> list[tuple[str, str]]:
        """``video.condition_fps`` for a UNet whose config has ``fps_cond: false`` (read from its config.json;
        a hub id is checked by :meth:`unet_inputs` once loaded)."""
        if job.video.condition_fps is None:
            return []
        try:
            config = component_config(job.model, "unet")
        except ModelLoadError:
            return []  # loading says what is wrong with the folder
        if config is None or config.get("fps_cond", True):
            return []
        return [_no_rate(job.video.condition_fps)]

    def unet_inputs(self, unet: UNetVideoCrafter, context: torch.Tensor, job: JobConfig) -> dict[str, Any]:
        """The text inputs, and the rate the fps embedding conditions on: ``video.condition_fps``, or
        ``video.fps`` when that is null."""
        inputs = super().unet_inputs(unet, context, job)
        rate = job.video.condition_fps
        if unet.config.fps_cond:
            inputs["fps"] = job.video.fps if rate is None else rate
        elif rate is not None:
            raise ConfigError.of(*_no_rate(rate))
        return inputs

    def build_tiny(self, folder: Path, seed: int = 0) -> Path:
        return write_tiny_videocrafter2(folder, seed=seed)


def _no_rate(rate: int) -> tuple[str, str]:
    return (
        "video.condition_fps",
        f"{rate}: this VideoCrafter2 UNet has fps_cond: false and conditions on no frame rate",
    )


def tiny_videocrafter_unet(spec: TinySpec = DEFAULT_SPEC, seed: int = 0) -> UNetVideoCrafter:
    """The tiny UNet3D of :func:`videogen.models.tiny.tiny_unet` (same weights for ``seed``) with a random
    fps embedding, whose output layer is not zero, so the rate really changes the output."""
    base = tiny_unet(spec, seed)
    torch.manual_seed(seed + 3)
    unet = UNetVideoCrafter.from_config({**base.config, "fps_cond": True})
    missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not name.startswith(("fps_proj.", "fps_embedding.")) for name in missing):
        raise RuntimeError(f"tiny UNetVideoCrafter does not extend the tiny UNet3D: {missing} {unexpected}")
    return unet.eval()


def write_tiny_videocrafter2(path: str | Path, seed: int = 0, spec: TinySpec = DEFAULT_SPEC) -> Path:
    """A complete diffusers-format VideoCrafter2 folder: the tiny UNetVideoCrafter with the tiny UNet3D
    model's VAE, text encoder, tokenizer and DDIM scheduler config (zeroscope's layout), written atomically."""
    with atomic_folder(path) as staging:
        tokenizer = tiny_tokenizer(spec.max_tokens)
        tiny_videocrafter_unet(spec, seed).save_pretrained(staging / "unet", safe_serialization=True)
        tiny_vae(spec, seed).save_pretrained(staging / "vae", safe_serialization=True)
        tiny_text_encoder(tokenizer, spec, seed).save_pretrained(staging / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(staging / "tokenizer")
        tiny_scheduler().save_pretrained(staging / "scheduler")
        index = {**MODEL_INDEX, "unet": [__name__, UNetVideoCrafter.__name__]}
        (staging / "model_index.json").write_text(json.dumps(index, indent=2))
    return Path(path)


FAMILY = register_family(VideoCrafter2Family())
