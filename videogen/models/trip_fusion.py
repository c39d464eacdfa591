"""TRIP's Temporal Noise Fusion (TNF) module (Zhang et al., CVPR 2024, arXiv 2403.17005, Sec. 3.3).

``eps_fused_i = phi(eps_res_i, eps_prior_i, t)``, one transformer block per frame over the frame's
latent tokens (``patch_size`` x ``patch_size`` patches of the ``C``-channel noise, ``N`` per frame):

    r, q = embed_res(eps_res), embed_prior(eps_prior)          (per token, linear)
    h  = r + pos
    h += (1 + g1) * SelfAttn(adaLN_1(h; c))                     over the N tokens of the frame
    h += (1 + g2) * CrossAttn(adaLN_2(h; c), K = LN([q, r]), V = [q, r])   the two noises at this token
    h += (1 + g3) * MLP(adaLN_3(h; c))
    eps_fused = eps_res + unpatch(Linear(h))

``adaLN(h; c) = LN(h) (1 + scale(c)) + shift(c)``; ``c = MLP(sin(t)) + MLP(sin(min(i, frame_horizon - 1)))``.
Each token's cross-attention attends to the two noises at its own position (the paper: reference and
residual noise "dynamically merged via attention"), with keys normalised but values and output kept
linear in the noises, so a per-token blend of prior and residual is easy to learn; the self-attention
gives it the frame's context. The frame-index term of ``c`` is our addition (the prior's error grows
with the distance from the image frame, so the module is told that distance); the paper names only
``t``. The output layer starts at zero, so an untrained module returns ``eps_res`` unchanged. Frames
never mix, so a clip worker fuses its own frames.

On disk (diffusers layout, safetensors only): ``<folder>/config.json`` and
``<folder>/diffusion_pytorch_model.safetensors``; a model folder carries it as ``<model>/trip_fusion/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from videogen.errors import ModelLoadError
from videogen.io.atomic import atomic_folder

FUSION_DIRNAME = "trip_fusion"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def _sinusoid(values: torch.Tensor, dim: int) -> torch.Tensor:
    return get_timestep_embedding(values.float().flatten(), dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class _Modulation(nn.Module):
    """``c -> (shift, scale, gate)`` for each of ``n`` sub-layers, all zero at initialisation."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(dim, 3 * n * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        chunks = self.linear(F.silu(cond)).unsqueeze(1).chunk(3 * self.n, dim=-1)
        return [tuple(chunks[3 * k : 3 * k + 3]) for k in range(self.n)]


class TemporalNoiseFusion(ModelMixin, ConfigMixin):
    """Fuses residual noise with the image noise prior (inputs and output ``(B, C, F, h, w)``, epsilon)."""

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(self, channels: int = 4, dim: int = 64, heads: int = 4, patch_size: int = 1, frame_horizon: int = 16):
        super().__init__()
        if dim % heads or dim % 4:
            raise ValueError(f"dim {dim} must be a multiple of heads ({heads}) and of 4")
        token = channels * patch_size * patch_size
        self.embed_res = nn.Linear(token, dim)
        self.embed_prior = nn.Linear(token, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.frame_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.modulation = _Modulation(dim, 3)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.proj_out = nn.Linear(dim, token)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        p = self.config.patch_size
        x = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b * f, (h // p) * (w // p), c * p * p)

    def _untokens(self, tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        b, c, f, h, w = shape
        p = self.config.patch_size
        x = tokens.reshape(b, f, h // p, w // p, c, p, p).permute(0, 4, 1, 2, 5, 3, 6)
        return x.reshape(b, c, f, h, w)

    def _positions(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        half = self.config.dim // 2
        r = _sinusoid(torch.arange(rows, device=device), half)
        c = _sinusoid(torch.arange(cols, device=device), half)
        return torch.cat([r[:, None].expand(rows, cols, half), c[None].expand(rows, cols, half)], -1).flatten(0, 1)

    def _condition(self, timestep: torch.Tensor, frames: torch.Tensor, batch: int) -> torch.Tensor:
        dim = self.config.dim
        t = torch.as_tensor(timestep, device=self.device).float().flatten().expand(batch)
        t_emb = self.time_mlp(_sinusoid(t, dim).to(self.dtype))
        horizon = frames.clamp(max=self.config.frame_horizon - 1)
        f_emb = self.frame_mlp(_sinusoid(horizon, dim).to(self.dtype))
        return (t_emb[:, None] + f_emb[None]).flatten(0, 1)

    def forward(
        self,
        residual: torch.Tensor,
        prior: torch.Tensor,
        timestep: torch.Tensor | float,
        frames: range | torch.Tensor,
    ) -> torch.Tensor:
        """``residual``, ``prior``: ``(B, C, F, h, w)``; ``timestep``: scalar or ``(B,)``; ``frames``: the
        ``F`` global frame indices (0 = the image frame). Returns the fused noise, shaped like ``residual``."""
        b, c, f, h, w = residual.shape
        p = self.config.patch_size
        if c != self.config.channels or h % p or w % p:
            raise ValueError(f"latents {tuple(residual.shape)} do not fit channels {self.config.channels}, patch {p}")
        frames = torch.as_tensor(list(frames) if isinstance(frames, range) else frames, device=residual.device)
        if frames.numel() != f:
            raise ValueError(f"{frames.numel()} frame indices for {f} frames")
        dtype = self.dtype
        pos = self._positions(h // p, w // p, residual.device).to(dtype)
        e_res = self.embed_res(self._tokens(residual.to(dtype)))
        e_pri = self.embed_prior(self._tokens(prior.to(dtype)))
        (s1, m1, g1), (s2, m2, g2), (s3, m3, g3) = self.modulation(self._condition(timestep, frames, b))
        hidden = e_res + pos
        x = self.norm(hidden) * (1 + m1) + s1
        hidden = hidden + (1 + g1) * self.self_attn(x, x, x, need_weights=False)[0]
        tokens, dim = hidden.shape[:2], hidden.shape[-1]
        query = (self.norm(hidden) * (1 + m2) + s2).reshape(-1, 1, dim)
        values = torch.stack([e_pri, e_res], dim=2).reshape(-1, 2, dim)
        merged = self.cross_attn(query, self.norm_kv(values), values, need_weights=False)[0]
        hidden = hidden + (1 + g2) * merged.reshape(*tokens, dim)
        hidden = hidden + (1 + g3) * self.mlp(self.norm(hidden) * (1 + m3) + s3)
        delta = self._untokens(self.proj_out(hidden), residual.shape)
        return residual + delta.to(residual.dtype)


def is_fusion_module(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved :class:`TemporalNoiseFusion` (config + safetensors)."""
    folder = Path(folder)
    config = folder / CONFIG_NAME
    if not (config.is_file() and (folder / WEIGHTS_NAME).is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == TemporalNoiseFusion.__name__
    except (json.JSONDecodeError, AttributeError, OSError):
        return False


def find_fusion_module(model_dir: str | Path) -> Path | None:
    """``<model_dir>/trip_fusion`` when it holds a trained module, else None.

    ``model_dir`` may also be the fusion folder itself, or a bundled model's name (``tiny``, ``shapes``).
    """
    from videogen.models.bundled import model_root

    folder = model_root(str(model_dir))
    for candidate in (folder / FUSION_DIRNAME, folder):
        if is_fusion_module(candidate):
            return candidate
    return None


def save_fusion(module: TemporalNoiseFusion, folder: str | Path) -> Path:
    """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` to ``folder``, atomically."""
    with atomic_folder(folder) as staging:
        module.save_pretrained(staging, safe_serialization=True)
    return Path(folder)


def load_fusion(
    folder: str | Path,
    channels: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TemporalNoiseFusion:
    """Load a saved module (eval mode, frozen); ``channels`` checks it fits the model's latents."""
    folder = Path(folder)
    if not is_fusion_module(folder):
        raise ModelLoadError(f"{folder}: not a trained fusion module (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        module = TemporalNoiseFusion.from_pretrained(folder, use_safetensors=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{folder}: could not load the fusion module: {first}") from None
    if channels is not None and module.config.channels != channels:
        raise ModelLoadError(
            f"{folder}: fusion module is for {module.config.channels}-channel latents, the model has {channels}"
        )
    return module.to(device).eval().requires_grad_(False)
