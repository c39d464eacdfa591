"""Model families: everything the renderer needs to know about one kind of video model, in one object.

The sampler, the pipeline, the writer and the parallel launcher never name a model. They ask the
job's :class:`ModelFamily` (in the spirit of torchtitan's ``TrainSpec``):

* how to load its components from a diffusers-format folder (:meth:`ModelFamily.load`);
* its latent geometry (:meth:`ModelFamily.geometry`, read from config files before any weights load);
* how the denoiser calls its UNet (:meth:`ModelFamily.unet_inputs`: the conditioning inputs);
* which of its modules are temporal convolutions, temporal transformers (with their attentions and
  any frame-position embeddings), spatial self-attentions, convolutions and norms
  (:meth:`ModelFamily.temporal_modules`, :meth:`ModelFamily.spatial_modules`);
* the functions that parallelize it along the ``clip`` and ``patch`` axes (:attr:`ModelFamily.parallelize`,
  import paths into ``parallel/``, which owns every collective; ``cfg`` and ``step`` act on the denoiser
  and fit every family);
* its default scheduler, the longest video its temporal layers can see at once, and a tiny random-weight
  model of its shape for tests (:meth:`ModelFamily.build_tiny`).

A family is chosen by ``model.family`` or, with ``auto``, from the model folder: each registered family
says whether a UNet ``config.json`` (its ``_class_name`` and keys) and the folder's ``model_index.json``
are its own (:meth:`ModelFamily.claims`). Built-in families are imported on first use, so importing the
pipeline imports none of them. Adding a family is adding one module with a :class:`ModelFamily`
subclass and registering it (docs/model_families.md has the checklist). A family shipped in another
package registers itself through the ``videogen.model_families`` entry-point group (``name =
"package.module:FAMILY"``), which is read when a family is looked up, in every worker process alike.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from videogen.errors import ModelLoadError

if TYPE_CHECKING:
    from videogen.config import JobConfig, ModelConfig
    from videogen.models.layers import SpatialModules, TemporalModules
    from videogen.models.loader import ModelBundle
    from videogen.prompts import TextContext
    from videogen.sampling import UnetCall

BUILTIN: dict[str, str] = {
    "unet3d": "videogen.models.families.unet3d",
    "videocrafter2": "videogen.models.families.videocrafter2",
    "animatediff": "videogen.models.families.animatediff",
    "svd": "videogen.models.families.svd",
}
"""Built-in family name -> the module that registers it (imported on first use)."""

DEFAULT_PARALLELIZE: Mapping[str, str] = {
    "clip": "parallel.clip:apply_clip_parallel",
    "patch": "parallel.patch:apply_patch_parallel",
}


@dataclass(frozen=True)
class LatentGeometry:
    """How pixels map to latents: ``channels`` per latent, ``spatial_factor`` pixels per latent along
    each side (the VAE), ``temporal_factor`` frames per latent frame (1 for a per-frame VAE), and the UNet's
    ``levels`` (each halves the latent), so sizes are multiples of ``size_multiple`` pixels."""

    channels: int
    spatial_factor: int
    temporal_factor: int
    levels: int

    @property
    def size_multiple(self) -> int:
        return self.spatial_factor * 2 ** (self.levels - 1)

    def explain_multiple(self) -> str:
        return f"VAE x{self.spatial_factor}, {self.levels} UNet levels"


class ModelFamily:
    """One kind of video model. Subclasses set :attr:`name` and override what differs from the defaults.

    The defaults describe a diffusers UNet with a per-frame ``AutoencoderKL`` and a CLIP text encoder.
    """

    name: str = ""
    description: str = ""
    unet_class_names: tuple[str, ...] = ()
    """UNet ``_class_name`` values that select this family under ``model.family: auto``."""
    parallelize: Mapping[str, str] = DEFAULT_PARALLELIZE
    default_sampler: str = "ddim"
    """The scheduler ``sampler.name: auto`` becomes (a name of :data:`videogen.sampling.SCHEDULERS`)."""
    components: tuple[str, ...] | None = None
    """The component folders checked before any weights load; None for :data:`videogen.models.loader.COMPONENTS`."""
    temporal_halo: int = 4
    """Frames of each neighbouring clip that one temporal convolution module needs under clip parallelism
    (the half-width of its stacked temporal kernels; 4 for UNet3D's ``TemporalConvLayer``, four stacked
    convs of temporal kernel 3; 0 without temporal convolutions): the shortest clip the model renders in."""

    # -- choosing the family -----------------------------------------------------------------------

    def claims(self, unet_config: dict[str, Any], model_index: dict[str, Any] | None, cfg: ModelConfig) -> bool:
        """True when a UNet with ``unet_config`` (``config.json`` as a dict), in a folder with ``model_index``
        (None without one), loaded with ``cfg``, is this family's."""
        return unet_config.get("_class_name") in self.unet_class_names

    # -- loading ---------------------------------------------------------------------------------

    def load(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> ModelBundle:
        """Every component of ``cfg`` on ``device`` in ``dtype``, in eval mode."""
        raise NotImplementedError

    def geometry(self, unet_config: dict[str, Any], vae_config: dict[str, Any]) -> LatentGeometry:
        """The latent geometry from the UNet's and the VAE's ``config.json`` (no weights)."""
        return LatentGeometry(
            channels=int(unet_config["in_channels"]),
            spatial_factor=2 ** (len(vae_config["block_out_channels"]) - 1),
            temporal_factor=1,
            levels=len(unet_config["block_out_channels"]),
        )

    def meta_unet(self, unet_config: dict[str, Any]) -> nn.Module:
        """The UNet ``unet_config`` describes, on the meta device (shapes only, for planning)."""
        cls = self.unet_class()
        with torch.device("meta"):
            return cls.from_config(unet_config)

    def unet_class(self) -> type[nn.Module]:
        raise NotImplementedError

    def configured_frame_limit(self, cfg: ModelConfig) -> int | None:
        """:meth:`frame_limit` of ``cfg``'s model from its config files (no weights); None when they do not say."""
        from videogen.models.loader import component_config

        unet_config = component_config(cfg, "unet")
        return None if unet_config is None else self.frame_limit(unet_config)

    def scope_timestep(self, timestep: float, cfg: ModelConfig) -> float:
        """A timestep of the job's dual-scope schedule (``parallel.dual_scope.switch_timestep``: a DDPM timestep,
        0 to the scheduler's training timesteps) in the units this family's UNet is called with, which the
        schedule compares it with; the same number for a UNet called with DDPM timesteps."""
        return timestep

    def frame_limit(self, unet_config: dict[str, Any]) -> int | None:
        """The most frames one temporal attention can see (frame-position embeddings), or None for no limit."""
        return None

    # -- calling ---------------------------------------------------------------------------------

    def unet_inputs(self, unet: nn.Module, context: torch.Tensor, job: JobConfig) -> dict[str, Any]:
        """The keyword inputs of one UNet call besides the sample and timestep, for text context ``context``."""
        from videogen.models.text_condition import unet_text_kwargs

        return unet_text_kwargs(unet, context)

    def condition(
        self,
        bundle: ModelBundle,
        job: JobConfig,
        seed: int,
        frames: range,
        share: Callable[[torch.Tensor], torch.Tensor],
    ) -> TextContext:
        """The conditional and unconditional contexts of the worker rendering ``frames``: the prompts' CLIP
        text embeddings. ``share`` gives every worker rank 0's copy of a tensor (call it on every rank alike)."""
        from videogen.prompts import build_text_context

        return build_text_context(bundle.tokenizer, bundle.text_encoder, job.prompts, job.video.num_frames, frames)

    def unet_call(self, unet: nn.Module, job: JobConfig, context: TextContext) -> UnetCall | None:
        """How the denoiser calls the UNet, ``(sample, timestep, context, branches) -> output`` on
        ``(B, C, F, h, w)`` tensors, for a ``context`` from :meth:`condition`; None for
        ``unet(sample, timestep, **unet_inputs(unet, context, job)).sample``."""
        return None

    def meta_condition(self, unet: nn.Module, job: JobConfig, latent_hw: tuple[int, int]) -> TextContext:
        """Conditioning of the shapes :meth:`condition` gives, on the meta device (no values), for a call of
        the meta-device ``unet`` on latents of ``latent_hw``: what the planner calls the UNet with to record
        its layers' shapes without weights."""
        from videogen.prompts import TextContext

        context = torch.empty(1, 1, unet.config.cross_attention_dim, device="meta")
        return TextContext(context, context)

    def guidance(self, job: JobConfig, frames: range) -> float | torch.Tensor:
        """The classifier-free guidance scale of the global ``frames``: one number, or one per frame
        shaped ``(1, 1, len(frames), 1, 1)``."""
        return job.sampler.guidance_scale

    def uses_image_prior(self, job: JobConfig) -> bool:
        """Whether TRIP's image noise prior shapes the render (docs/i2v.md): whenever an image is given."""
        return job.image.path is not None

    def job_problems(self, job: JobConfig) -> list[tuple[str, str]]:
        """``(key, what is wrong)`` for each job setting this family cannot render (checked before weights load).

        The base refuses ``video.condition_fps``: a family whose UNet is conditioned on a frame rate
        overrides this, so the key is never silently ignored."""
        rate = job.video.condition_fps
        if rate is None:
            return []
        return [("video.condition_fps", f"{rate}: the {self.name} family conditions on no frame rate; remove the key")]

    # -- decoding --------------------------------------------------------------------------------

    def decode(self, vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Pixels ``(n, 3, H, W)`` in [-1, 1] of ``z`` ``(n, C, h, w)`` (latents over the scaling factor)."""
        return vae.decode(z).sample

    def decode_halo(self, job: JobConfig) -> int | None:
        """Latent frames of context a decoded chunk takes from each side; None for a VAE that decodes
        every frame on its own (no context, any chunking gives the same pixels)."""
        return None

    # -- structure, for the parallel axes ----------------------------------------------------------

    def temporal_modules(self, unet: nn.Module) -> TemporalModules:
        """The modules that couple frames (clip parallelism shards them)."""
        from videogen.models.layers import find_temporal_modules

        return find_temporal_modules(unet)

    def spatial_modules(self, unet: nn.Module) -> SpatialModules:
        """The modules that couple pixels of a frame (patch parallelism splits them)."""
        from videogen.models.layers import find_spatial_modules

        return find_spatial_modules(unet, self.temporal_modules(unet).paths())

    def cross_attention_keys(self, unet: nn.Module) -> set[str]:
        """Processor keys of the attentions that read the text (per-frame prompts replace their context)."""
        from videogen.models.layers import cross_attention_keys

        return cross_attention_keys(unet)

    # -- tests -----------------------------------------------------------------------------------

    def build_tiny(self, folder: Path, seed: int = 0) -> Path:
        """Write a tiny random-weight model of this family to ``folder`` (a diffusers-format folder)."""
        raise NotImplementedError(f"the {self.name} family has no tiny model")


_REGISTRY: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Make ``family`` selectable by ``model.family: <name>`` and by ``auto``; returns it."""
    if not family.name:
        raise ValueError("a model family needs a name")
    _REGISTRY[family.name] = family
    return family


ENTRY_POINT_GROUP = "videogen.model_families"


def _import_builtin(name: str) -> None:
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])


def _plugins() -> dict[str, metadata.EntryPoint]:
    return {point.name: point for point in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_plugin(point: metadata.EntryPoint) -> None:
    family = point.load()
    if not isinstance(family, ModelFamily):
        raise ModelLoadError(f"entry point {point.value} ({ENTRY_POINT_GROUP}) is not a ModelFamily")
    if family.name not in _REGISTRY:
        register_family(family)


def family_names() -> list[str]:
    """Every selectable family: the built-in ones, the installed plugins and any registered since."""
    return sorted(set(BUILTIN) | set(_plugins()) | set(_REGISTRY))


def family_named(name: str, key: str = "model.family") -> ModelFamily:
    """The family called ``name``, or a :class:`ModelLoadError` listing the known ones."""
    _import_builtin(name)
    if name not in _REGISTRY and name in (plugins := _plugins()):
        _load_plugin(plugins[name])
    if name not in _REGISTRY:
        raise ModelLoadError(f"{key}: {name!r} is not a model family (known: auto, {', '.join(family_names())})")
    return _REGISTRY[name]


def all_families() -> list[ModelFamily]:
    """Every family: built-in, plugins (entry points) and registered."""
    for name in BUILTIN:
        _import_builtin(name)
    for name, point in _plugins().items():
        if name not in _REGISTRY:
            _load_plugin(point)
    return list(_REGISTRY.values())


def read_model_index(root: Path) -> dict[str, Any] | None:
    path = root / "model_index.json"
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path}: not a readable JSON file ({error})") from None
    return index if isinstance(index, dict) else None


def detect_family(
    unet_config: dict[str, Any] | None, model_index: dict[str, Any] | None, where: str, cfg: ModelConfig
) -> ModelFamily:
    """The family that claims a UNet config (``model.family: auto``); a clear error when none or several do.

    A hub id (no local config to read) is taken as UNet3D.
    """
    if unet_config is None:
        return family_named("unet3d")
    claimed = [f for f in all_families() if f.claims(unet_config, model_index, cfg)]
    if len(claimed) == 1:
        return claimed[0]
    cls = unet_config.get("_class_name", "an unnamed class")
    if not claimed:
        raise ModelLoadError(
            f"model.family: the UNet in {where} is {cls}, which no model family claims "
            f"(known: {', '.join(family_names())}); set model.family to the one it is"
        )
    names = ", ".join(f.name for f in claimed)
    raise ModelLoadError(f"model.family: the UNet in {where} ({cls}) is claimed by {names}; set model.family")


def resolve_import(path: str) -> Callable[..., Any]:
    """``"module:attribute"`` -> the attribute (a family's parallelize function)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
