"""Which modules of a video UNet couple frames and which couple pixels, found by class and module path.

Clip parallelism shards the *temporal* modules (:class:`TemporalModules`): temporal convolutions
(``TemporalConvLayer``: four GroupNorm -> SiLU -> Conv3d stages with a ``(3, 1, 1)`` kernel) and temporal
transformers (a GroupNorm over frames, then self-attention along the frame axis at every pixel, with
frame-position embeddings in some families). Patch parallelism splits the *spatial* modules
(:class:`SpatialModules`): 3x3 convolutions, GroupNorms and the self-attentions of the spatial
transformers. A :class:`~videogen.models.family.ModelFamily` says which classes are which for its UNet;
these finders do the walking.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn

from videogen.errors import ConfigError

__all__ = [
    "SpatialModules",
    "TemporalModules",
    "cross_attention_keys",
    "find_spatial_modules",
    "find_temporal_modules",
]


@dataclass(frozen=True)
class TemporalModules:
    """The frame-coupling modules of a UNet, with their module paths.

    ``positions``: the frame-position embeddings inside the transformers (module path -> module), which
    add ``pe[f]`` to frame ``f``'s tokens before attention; ``frame_limit`` the most positions they hold.
    """

    convs: list[tuple[str, nn.Module]]
    transformers: list[tuple[str, nn.Module]]
    positions: list[tuple[str, nn.Module]] = field(default_factory=list)
    frame_limit: int | None = None

    def attentions(self) -> list[tuple[str, Attention]]:
        """Every Attention inside the temporal transformers (``attn1`` and ``attn2`` of each block)."""
        return [
            (f"{path}.{name}", module)
            for path, transformer in self.transformers
            for name, module in transformer.named_modules()
            if isinstance(module, Attention)
        ]

    def paths(self) -> tuple[str, ...]:
        return tuple(path for path, _ in (*self.convs, *self.transformers))

    def position_of(self, attention_path: str) -> nn.Module | None:
        """The frame-position embedding added to the input of the attention at ``attention_path``
        (its transformer block's ``pos_embed``), or None when that block has none."""
        block = attention_path.rpartition(".")[0]
        return dict(self.positions).get(f"{block}.pos_embed")


def find_temporal_modules(
    unet: nn.Module,
    conv_classes: tuple[type, ...] = (TemporalConvLayer,),
    transformer_classes: tuple[type, ...] = (TransformerTemporalModel,),
    position_limit: int | None = None,
) -> TemporalModules:
    """Locate the temporal convolutions and transformers of ``unet`` by class.

    Frame-position embeddings (a transformer block's ``pos_embed``) are allowed only when the family
    handles them (``position_limit``: how many positions they hold); otherwise they are refused with a
    :class:`ConfigError`, since sharding frames would silently shift them. A model without temporal
    modules is refused too.
    """
    convs, transformers, positions = [], [], []
    for path, module in unet.named_modules():
        if isinstance(module, conv_classes):
            convs.append((path, module))
        elif isinstance(module, transformer_classes):
            transformers.append((path, module))
            for i, block in enumerate(module.transformer_blocks):
                pos = getattr(block, "pos_embed", None)
                if pos is None:
                    continue
                if position_limit is None:
                    raise ConfigError(f"{path} has temporal positional embeddings; clip sharding needs none")
                positions.append((f"{path}.transformer_blocks.{i}.pos_embed", pos))
    if not convs and not transformers:
        raise ConfigError(f"{type(unet).__name__} has no temporal layers to shard over clips")
    return TemporalModules(convs, transformers, positions, position_limit if positions else None)


@dataclass(frozen=True)
class SpatialModules:
    """The modules of a model that patch parallelism wraps, with their paths.

    ``convs``: convolutions that need halos; ``norms``: every GroupNorm (4-D and 5-D);
    ``attentions``: the self-attentions of the spatial transformers.
    """

    convs: list[tuple[str, nn.Conv2d]]
    norms: list[tuple[str, nn.GroupNorm]]
    attentions: list[tuple[str, Attention]]


def _under(path: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    return any(p == "" or path == p or path.startswith(p + ".") for p in prefixes)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _spatial_self_attentions(path: str, transformer: Transformer2DModel) -> list[tuple[str, Attention]]:
    if not transformer.is_input_continuous:
        raise ConfigError(f"{path}: only continuous-input spatial transformers can be patched")
    found = []
    for name, module in transformer.named_modules():
        if isinstance(module, Attention) and not module.is_cross_attention:
            if module.group_norm is not None or module.spatial_norm is not None:
                raise ConfigError(f"{_join(path, name)}: spatial attention with its own norm cannot be patched")
            found.append((_join(path, name), module))
    return found


def find_spatial_modules(
    model: nn.Module, temporal: tuple[str, ...] = (), within: tuple[str, ...] = ("",)
) -> SpatialModules:
    """Locate what patch parallelism wraps in ``model`` (under the module paths ``within``; ``""`` is all).

    ``temporal``: paths of the temporal modules; their attention stays untouched (it mixes frames,
    not pixels), their GroupNorms are synchronised. Any other attention outside the spatial transformers
    is refused with :class:`ConfigError`, as are downsamplers that pad asymmetrically themselves.
    """
    named = [(p, m) for p, m in model.named_modules() if any(p.startswith(w) for w in within)]
    transformers = [(p, m) for p, m in named if isinstance(m, Transformer2DModel)]
    attentions = [a for p, t in transformers for a in _spatial_self_attentions(p, t)]
    known = {p for p, _ in attentions}
    convs, norms = [], []
    for path, module in named:
        if isinstance(module, Downsample2D) and module.use_conv and module.padding == 0:
            raise ConfigError(f"{path}: a downsampler that pads only its bottom row cannot be patched")
        if isinstance(module, nn.Conv2d):
            convs.append((path, module))
        elif isinstance(module, nn.GroupNorm):
            norms.append((path, module))
        elif isinstance(module, Attention) and path not in known:
            in_spatial = _under(path, [p for p, _ in transformers])
            if not (module.is_cross_attention and in_spatial) and not _under(path, temporal):
                raise ConfigError(f"{path}: an attention patch parallelism does not know how to split")
    return SpatialModules(convs, norms, attentions)


def cross_attention_keys(unet: nn.Module) -> set[str]:
    """Processor keys (``<path>.processor``) of every attention that reads an encoder context."""
    return {
        f"{path}.processor" for path, m in unet.named_modules() if isinstance(m, Attention) and m.is_cross_attention
    }
