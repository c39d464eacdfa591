"""The Stable Video Diffusion family: SVD and SVD-XT image-to-video (Blattmann et al., arXiv 2311.15127).

Stable Video Diffusion animates one image; it reads no text. In diffusers form
(``StableVideoDiffusionPipeline``) it is:

* ``UNetSpatioTemporalConditionModel``, called frames-first on ``[B, F, 2C, h, w]``: the noisy latents
  with the conditioning image's latent concatenated on channels (4 + 4); ``encoder_hidden_states`` is one
  CLIP *image* embedding ``[B, 1, D]``; ``added_time_ids`` are ``(fps - 1, motion_bucket_id,
  noise_aug_strength)``. Its temporal layers are ``TemporalResnetBlock`` (GroupNorm over all frames,
  two Conv3d with a ``(3, 1, 1)`` kernel), blended with the spatial ResNet by a learned ``AlphaBlender``,
  and the temporal blocks of every ``TransformerSpatioTemporalModel``, whose self-attention runs along
  the frames after adding a sinusoidal embedding of each frame's index (``time_proj`` / ``time_pos_embed``;
  no length limit, trained on 14 and 25 frames).
* ``AutoencoderKLTemporalDecoder``: a per-frame encoder and a decoder with temporal ResNets, so
  ``decode`` takes ``num_frames`` and frames decoded together see each other.
* ``CLIPVisionModelWithProjection`` with its ``CLIPImageProcessor``, and an ``EulerDiscreteScheduler`` with
  Karras sigmas, continuous timesteps and v-prediction (the family's sampler).

Conditioning, as the diffusers pipeline computes it: the image ``x`` in [-1, 1] is resized with
antialiasing to the encoder's size and normalised for CLIP; its embedding ``e`` is the conditional
context and zeros the unconditional one. The VAE encodes ``x + noise_aug_strength * n`` (``n`` drawn
from the job seed, stream ``image``) to the posterior mode ``z_img`` (unscaled), concatenated to every
frame of the conditional branch and zeros to the unconditional one. Guidance is per frame:
``s_f = linspace(min_guidance_scale, max_guidance_scale, F)[f]`` over the video's global frames.

Patch workers call the UNet on a band of latent rows; :data:`LATENT_WINDOW` on the UNet (set by
:mod:`parallel.svd`) names that band so the image latent is cut to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from diffusers.models.attention import TemporalBasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import TemporalResnetBlock
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from videogen.config import JobConfig, ModelConfig
from videogen.errors import ConfigError, ModelLoadError
from videogen.io.atomic import atomic_folder
from videogen.io.image import load_image
from videogen.models.bundled import model_root
from videogen.models.family import LatentGeometry, ModelFamily, register_family
from videogen.models.layers import SpatialModules, TemporalModules
from videogen.models.loader import ModelBundle, load_component, load_scheduler_config
from videogen.models.vae_encode import encode_posterior
from videogen.noise.gaussian import frame_noise
from videogen.prompts import TextContext

LATENT_WINDOW = "latent_window"
"""UNet attribute ``(axis, start, length)``: the part of the latent frame the UNet is called on (patch
workers' bands, ``axis`` -2 rows or -1 columns); absent for the whole frame."""

Share = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ImageCondition(TextContext):
    """SVD's conditioning: ``cond`` the CLIP image embedding ``(1, 1, D)``, ``uncond`` zeros, and the
    noise-augmented image latent ``image_latent`` ``(1, C, h, w)`` for the conditional branch."""

    image_latent: torch.Tensor


class SvdCall:
    """The UNet call of one denoiser evaluation on ``sample`` ``(B, C, F, h, w)`` (batch = guidance branches).

    Builds ``[B, F, 2C, h, w]``: the sample frames-first, then per branch the image latent (zeros for
    ``uncond``) on every frame; returns the output ``(B, C, F, h, w)``.
    """

    def __init__(self, unet: nn.Module, image_latent: torch.Tensor, time_ids: torch.Tensor):
        self.unet = unet
        self.image_latent = image_latent
        self.time_ids = time_ids

    def _image(self, like: torch.Tensor) -> torch.Tensor:
        image = self.image_latent.to(device=like.device, dtype=like.dtype)
        window = getattr(self.unet, LATENT_WINDOW, None)
        if window is not None:
            axis, start, length = window
            image = image.narrow(image.dim() + axis, start, length)
        return image

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, branches: tuple[str, ...]
    ) -> torch.Tensor:
        if sample.shape[0] != len(branches):
            raise ValueError(f"a batch of {sample.shape[0]} for the guidance branches {branches}")
        image = self._image(sample)
        images = torch.cat([torch.zeros_like(image) if b == "uncond" else image for b in branches])
        frames = sample.shape[2]
        model_in = torch.cat([sample.transpose(1, 2), images[:, None].expand(-1, frames, -1, -1, -1)], dim=2)
        time_ids = self.time_ids.to(device=sample.device, dtype=sample.dtype).expand(len(branches), -1)
        out = self.unet(model_in, timestep, encoder_hidden_states=context, added_time_ids=time_ids).sample
        return out.transpose(1, 2)


@torch.no_grad()
def image_embedding(
    encoder: CLIPVisionModelWithProjection, processor: CLIPImageProcessor, image: torch.Tensor
) -> torch.Tensor:
    """The CLIP image embedding ``(1, 1, D)`` of ``image`` ``(3, H, W)`` in [-1, 1], as SVD computes it:
    antialiased bicubic resize to the encoder's input size, then CLIP's normalisation."""
    size = encoder.config.image_size
    x = _resize_with_antialiasing(image[None].float(), (size, size))
    pixels = processor(
        images=(x + 1.0) / 2.0,
        do_normalize=True,
        do_center_crop=False,
        do_resize=False,
        do_rescale=False,
        return_tensors="pt",
    ).pixel_values
    return encoder(pixels.to(device=encoder.device, dtype=encoder.dtype)).image_embeds[:, None]


@torch.no_grad()
def image_latent(vae: AutoencoderKLTemporalDecoder, image: torch.Tensor, augmentation: torch.Tensor) -> torch.Tensor:
    """``mode(E(x + augmentation))`` ``(1, C, h, w)``, float32: the image latent SVD concatenates (unscaled).
    ``image`` is ``(3, H, W)`` in [-1, 1], ``augmentation`` ``(1, 3, H, W)``; ``x + augmentation`` is formed
    in float32. ``E`` runs in the VAE's dtype, or in float32 for a float16 VAE that sets ``force_upcast``
    (SVD's does), as diffusers' ``StableVideoDiffusionPipeline`` does
    (:func:`videogen.models.vae_encode.encode_posterior`)."""
    return encode_posterior(vae, image[None].float() + augmentation).mode().float()


def augmentation_noise(seed: int, image: torch.Tensor, strength: float) -> torch.Tensor:
    """``strength * n``, ``n`` standard normal of the image's shape ``(1, 3, H, W)`` from the job seed."""
    return strength * frame_noise(seed, 0, (1, *image.shape), stream="image")


def guidance_scales(job: JobConfig, frames: range) -> torch.Tensor:
    """``linspace(min_guidance_scale, max_guidance_scale, F)`` at the global ``frames``, shaped ``(1, 1, n, 1, 1)``."""
    s = job.svd
    scales = torch.linspace(s.min_guidance_scale, s.max_guidance_scale, job.video.num_frames)
    return scales[frames.start : frames.stop].view(1, 1, -1, 1, 1)


def time_ids(job: JobConfig) -> torch.Tensor:
    """``added_time_ids`` ``(1, 3)``: ``fps - 1`` (SVD was conditioned on it), motion bucket, augmentation."""
    s = job.svd
    return torch.tensor([[s.fps - 1, s.motion_bucket_id, s.noise_aug_strength]], dtype=torch.float32)


def _image_processor(cfg: ModelConfig) -> CLIPImageProcessor:
    root = model_root(cfg.path)
    folder = root / "feature_extractor"
    if not (folder / "preprocessor_config.json").is_file():
        raise ModelLoadError(f"model.path: {root} has no feature_extractor/ folder with preprocessor_config.json")
    try:
        return CLIPImageProcessor.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{folder}: could not load the image processor: {error}") from None


@dataclass(frozen=True)
class _ModelFolder:
    """``model.path`` as :func:`videogen.models.loader.component_dir` reads it, for a component (the image
    encoder) that has no ``model.<component>`` key of its own."""

    path: str
    image_encoder: None = None


class SvdFamily(ModelFamily):
    name = "svd"
    description = "UNetSpatioTemporalConditionModel (Stable Video Diffusion, SVD-XT), image-to-video"
    unet_class_names = ("UNetSpatioTemporalConditionModel",)
    parallelize = {"clip": "parallel.svd:apply_svd_clip_parallel", "patch": "parallel.svd:apply_svd_patch_parallel"}
    default_sampler = "euler"
    components = ("unet", "vae", "scheduler")
    temporal_halo = 2  # a TemporalResnetBlock: two convs of temporal kernel 3 (parallel.svd.TEMPORAL_HALO)

    def unet_class(self) -> type[UNetSpatioTemporalConditionModel]:
        return UNetSpatioTemporalConditionModel

    def meta_unet(self, unet_config: dict[str, Any]) -> nn.Module:
        """On the meta device throughout: ``AlphaBlender`` makes its mix factor with ``torch.Tensor([alpha])``,
        which the default device does not reach, so the built UNet is moved there too."""
        return super().meta_unet(unet_config).to("meta")

    # -- loading ---------------------------------------------------------------------------------

    def load(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> ModelBundle:
        unet = load_component(cfg, "unet", UNetSpatioTemporalConditionModel, "UNet", torch_dtype=dtype)
        vae = load_component(cfg, "vae", AutoencoderKLTemporalDecoder, "VAE", torch_dtype=dtype)
        encoder = load_component(
            _ModelFolder(cfg.path), "image_encoder", CLIPVisionModelWithProjection, "image encoder", dtype=dtype
        )
        _check_parts(unet, vae, encoder)
        extras = {"image_encoder": encoder, "feature_extractor": _image_processor(cfg)}
        return ModelBundle(self, unet, vae, None, None, load_scheduler_config(cfg), device, dtype, extras)

    def geometry(self, unet_config: dict[str, Any], vae_config: dict[str, Any]) -> LatentGeometry:
        return LatentGeometry(
            channels=int(unet_config["out_channels"]),
            spatial_factor=2 ** (len(vae_config["block_out_channels"]) - 1),
            temporal_factor=1,
            levels=len(unet_config["block_out_channels"]),
        )

    def job_problems(self, job: JobConfig) -> list[tuple[str, str]]:
        out = []
        if job.image.path is None:
            out.append(("image.path", "Stable Video Diffusion animates an image: give the image to start from"))
        if job.prompts.schedule:
            out.append(("prompts.schedule", "Stable Video Diffusion reads no text; remove the prompt schedule"))
        if job.video.condition_fps is not None:
            out.append(
                (
                    "video.condition_fps",
                    f"{job.video.condition_fps}: Stable Video Diffusion is conditioned on svd.fps; set that instead",
                )
            )
        shortest = job.video.num_frames // max(job.parallel.clip, 1)
        if job.parallel.clip > 1 and job.svd.decode_halo > shortest:
            out.append(
                (
                    "svd.decode_halo",
                    f"{job.svd.decode_halo} frames of each neighbouring clip do not fit in the shortest clip "
                    f"({shortest} frames); use at most {shortest}",
                )
            )
        return out

    # -- conditioning and calling ----------------------------------------------------------------

    def condition(self, bundle: ModelBundle, job: JobConfig, seed: int, frames: range, share: Share) -> TextContext:
        image = load_image(job.image.path, job.video.width, job.video.height, job.image.resize)
        encoder, processor = bundle.extras["image_encoder"], bundle.extras["feature_extractor"]
        embedding = share(image_embedding(encoder, processor, image).float().contiguous())
        noise = augmentation_noise(seed, image, job.svd.noise_aug_strength)
        latent = share(image_latent(bundle.vae, image, noise).contiguous())
        return ImageCondition(embedding, torch.zeros_like(embedding), latent)

    def unet_call(self, unet: nn.Module, job: JobConfig, context: TextContext) -> SvdCall:
        if not isinstance(context, ImageCondition):
            raise TypeError("Stable Video Diffusion is called with an ImageCondition")
        return SvdCall(unet, context.image_latent, time_ids(job))

    def meta_condition(self, unet: nn.Module, job: JobConfig, latent_hw: tuple[int, int]) -> ImageCondition:
        embedding = torch.empty(1, 1, unet.config.cross_attention_dim, device="meta")
        latent = torch.empty(1, unet.config.out_channels, *latent_hw, device="meta")
        return ImageCondition(embedding, embedding, latent)

    def scope_timestep(self, timestep: float, cfg: ModelConfig) -> float:
        """SVD's UNet is called with ``c_noise = ln(sigma) / 4`` (EDM, Karras et al. 2022): DDPM timestep ``t``
        is the noise level ``sigma_t = sqrt((1 - abar_t) / abar_t)`` of the scheduler's training betas
        (linear between integer timesteps), so ``t = 800`` is ``c_noise = 0.41`` on SVD's ``scaled_linear``
        betas."""
        scheduler = EulerDiscreteScheduler.from_config(load_scheduler_config(cfg))
        abar = scheduler.alphas_cumprod.double()
        sigmas = ((1 - abar) / abar).sqrt()
        t = min(max(float(timestep), 0.0), len(sigmas) - 1.0)
        low = int(t)
        high = min(low + 1, len(sigmas) - 1)
        sigma = sigmas[low] + (t - low) * (sigmas[high] - sigmas[low])
        return float(torch.log(sigma)) / 4

    def guidance(self, job: JobConfig, frames: range) -> torch.Tensor:
        """Per-frame scales of ``frames``. Whether to guide at all is decided for the whole video (some scale
        above 1, as diffusers decides by the largest), so clip workers agree even where their own frames'
        scales do not pass 1."""
        return guidance_scales(job, frames)

    def uses_image_prior(self, job: JobConfig) -> bool:
        return job.svd.image_prior

    def decode(self, vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z, num_frames=z.shape[0]).sample

    def decode_halo(self, job: JobConfig) -> int:
        return job.svd.decode_halo

    # -- structure, for the parallel axes ----------------------------------------------------------

    def temporal_modules(self, unet: nn.Module) -> TemporalModules:
        """Temporal ResNets as ``convs``, the temporal transformer blocks as ``transformers`` and each
        spatio-temporal transformer's frame-index embedding (``time_proj``) as ``positions``."""
        convs, blocks, positions = [], [], []
        for path, module in unet.named_modules():
            if isinstance(module, TemporalResnetBlock):
                convs.append((path, module))
            elif isinstance(module, TransformerSpatioTemporalModel):
                positions.append((f"{path}.time_proj", module.time_proj))
            elif isinstance(module, TemporalBasicTransformerBlock):
                blocks.append((path, module))
        if not convs and not blocks:
            raise ConfigError(f"{type(unet).__name__} has no temporal layers to shard over clips")
        return TemporalModules(convs, blocks, positions, None)

    def spatial_modules(self, unet: nn.Module) -> SpatialModules:
        """3x3 convolutions, every GroupNorm (4-D per frame and the temporal ResNets' 5-D ones) and the
        self-attentions of the spatial transformer blocks; temporal and cross-attentions stay whole."""
        transformers = [(p, m) for p, m in unet.named_modules() if isinstance(m, TransformerSpatioTemporalModel)]
        spatial = {
            f"{path}.transformer_blocks.{i}.attn1": block.attn1
            for path, transformer in transformers
            for i, block in enumerate(transformer.transformer_blocks)
        }
        temporal = {f"{path}.temporal_transformer_blocks." for path, _ in transformers}
        convs, norms, attentions = [], [], []
        for path, module in unet.named_modules():
            if isinstance(module, nn.Conv2d):
                convs.append((path, module))
            elif isinstance(module, nn.GroupNorm):
                norms.append((path, module))
            elif isinstance(module, Attention):
                if path in spatial:
                    if module.group_norm is not None or module.spatial_norm is not None:
                        raise ConfigError(f"{path}: spatial attention with its own norm cannot be patched")
                    attentions.append((path, module))
                elif not module.is_cross_attention and not any(path.startswith(t) for t in temporal):
                    raise ConfigError(f"{path}: an attention patch parallelism does not know how to split")
        return SpatialModules(convs, norms, attentions)

    def cross_attention_keys(self, unet: nn.Module) -> set[str]:
        return set()

    # -- tests -----------------------------------------------------------------------------------

    def build_tiny(self, folder: Path, seed: int = 0) -> Path:
        with atomic_folder(folder) as staging:
            tiny_pipeline(seed).save_pretrained(str(staging), safe_serialization=True)
        return Path(folder)


def _check_parts(unet: nn.Module, vae: nn.Module, encoder: nn.Module) -> None:
    config = unet.config
    if config.in_channels != 2 * vae.config.latent_channels:
        raise ModelLoadError(
            f"the UNet takes {config.in_channels} channels, but noise and image latents of the VAE give "
            f"2 x {vae.config.latent_channels}: components from different models?"
        )
    if encoder.config.projection_dim != config.cross_attention_dim:
        raise ModelLoadError(
            f"the image encoder's projection_dim {encoder.config.projection_dim} does not match the UNet's "
            f"cross_attention_dim {config.cross_attention_dim}: components from different models?"
        )
    expected = unet.add_embedding.linear_1.in_features
    if config.addition_time_embed_dim * 3 != expected:
        raise ModelLoadError(
            f"the UNet's add_embedding takes {expected} features, not 3 added time ids x "
            f"addition_time_embed_dim {config.addition_time_embed_dim}: its config.json is inconsistent"
        )


SVD_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "use_karras_sigmas": True,
}
"""The scheduler config of Stability's SVD and SVD-XT checkpoints (EDM sigmas for an Euler sampler)."""


def tiny_pipeline(seed: int = 0, width: int = 32) -> StableVideoDiffusionPipeline:
    """A random-weight SVD of SVD's shape: 2 UNet levels of ``width`` and ``2 * width`` channels, a x2
    temporal-decoder VAE, a 2-layer CLIP vision tower at SVD's 224-pixel input, and SVD's scheduler.

    The temporal blocks build in GroupNorms of 32 groups, so ``width`` is a multiple of 32; the second
    level has two channels per group, so the time embedding (a per-channel shift, which a one-channel
    group would normalise away) reaches the output there.
    """
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(width, 2 * width),
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(2, 2),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        num_frames=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
    )
    torch.manual_seed(seed + 2)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            patch_size=32,
            intermediate_size=37,
        )
    )
    return StableVideoDiffusionPipeline(
        vae=vae.eval(),
        image_encoder=encoder.eval(),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
        feature_extractor=CLIPImageProcessor(),
    )


FAMILY = register_family(SvdFamily())
