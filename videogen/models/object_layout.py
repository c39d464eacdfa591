"""An object layout prior: one sharp layout drawn per render, from where the caption's objects start.

The mean prior (:class:`videogen.models.layout_prior.LayoutPrior`) predicts ``E[z_0^f | c, p]``, the
average over every start and size the caption allows: a soft blob, whose roundness the UNet keeps. This
prior draws one placement and predicts the mean over what the placement leaves open (background,
texture), so its object is sharp. It has three parts, all conditioned on the caption's text encoder
states through ``e = SiLU(W_c vec(c))``:

1. **Placement quantiles** (implicit quantile networks, Dabney et al., ICML 2018). A placement ``s`` holds,
   for ``S`` object slots in caption order, ``(x, y, r)``: the centre in frame 0 as fractions of the width
   and height and the radius as a fraction of the shorter side (zeros for an absent object).
   ``q(c, tau)_d`` is trained with the pinball loss ``max(tau_d u_d, (tau_d - 1) u_d)``,
   ``u = s - q(c, tau)``, at ``tau ~ U(0, 1)^{3S}``, so ``q(c, tau)_d`` is the ``tau_d``-quantile of
   ``s_d`` given ``c``. A render draws ``s = q(c, tau)`` with ``tau`` from its seed (each value from its
   own conditional distribution; the shapes world draws them independently given the caption).
2. **Trajectory**: ``o(c, s, p)``, each object's centre at position ``p = f / (F - 1)`` minus its start,
   regressed on the true centres (``|s_xy + o - x_f|^2``, bounces and camera pans included).
3. **Object field**: each latent pixel from its offset to each object's centre in units of that object's
   radius, ``d_k = (g - x_{f,k}) / r_k`` (``g`` the pixel centre in frame fractions; an absent object
   at ``d = 4``, clipped to ``[-4, 4]``), and its place ``g`` in the frame:

       h = W_1 [gamma_6(d / 4), d / 4, gamma_4(g), g] + W_e e,   z(g) = MLP(h)  (C values)

   with ``gamma_K(x) = [sin(pi k x), cos(pi k x)]_{k=1..K}``. It is the same function of the offset at
   every place, so what it learns of a shape at one place holds at all of them (translation
   equivariance), and a square stays square. It is trained on the true centres, ``|z - z_0^f|^2``.

A render's layout of frame ``f`` is ``field(c, s_xy + o(c, s, p_f), s_r)``. On disk it is a diffusers
folder like the mean prior's (``config.json`` with ``_class_name: ObjectLayoutPrior``, safetensors weights).
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import CONFIG_NAME
from torch import nn

from videogen.noise.gaussian import frame_seed

PLACEMENT_VALUES = 3
"""Numbers per object slot of a placement: ``(x, y, r)``."""
FAR = 4.0
"""The offset (in radii) at which every pixel is outside an object; an absent object sits there."""
ABSENT_RADIUS = 0.02
"""A drawn radius below this fraction of the shorter side marks an absent object (absent slots are zeros)."""
QUANTILE_FREQUENCIES = 4
TRAJECTORY_FREQUENCIES = 6
OFFSET_FREQUENCIES = 6
PLACE_FREQUENCIES = 4


def fourier_features(values: torch.Tensor, frequencies: int) -> torch.Tensor:
    """``[sin(pi k x), cos(pi k x)]_{k=1..K}`` of every value ``x`` of the last axis: ``(..., V)`` ->
    ``(..., 2 V K)``."""
    k = torch.arange(1, frequencies + 1, device=values.device, dtype=torch.float32) * math.pi
    angles = (values.float()[..., None] * k).flatten(-2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def pinball_loss(quantiles: torch.Tensor, tau: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean quantile (pinball) loss ``max(tau u, (tau - 1) u)``, ``u = target - quantiles``: minimised,
    for each ``tau``, by the ``tau``-quantile of ``target``."""
    u = target.float() - quantiles.float()
    return torch.maximum(tau * u, (tau - 1) * u).mean()


def check_text_states(config, text: torch.Tensor) -> None:
    """Refuse caption states ``text`` ``(N, L, D)`` other than the prior ``config``'s ``text_tokens x text_dim``."""
    if text.shape[1:] != (config.text_tokens, config.text_dim):
        got = tuple(text.shape[1:])
        raise ValueError(f"the layout prior takes text states of {config.text_tokens} x {config.text_dim}, got {got}")


class ObjectLayoutPrior(ModelMixin, ConfigMixin):
    """Placement quantiles, trajectory and object field (module docstring); :meth:`frame_latents` is a layout."""

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        latent_height: int = 16,
        latent_width: int = 16,
        text_tokens: int = 24,
        text_dim: int = 64,
        slots: int = 2,
        hidden: int = 128,
        text_hidden: int = 256,
    ):
        super().__init__()
        values = slots * PLACEMENT_VALUES
        self.text = nn.Sequential(nn.Linear(text_tokens * text_dim, text_hidden), nn.SiLU())
        self.trajectory_body = nn.Sequential(
            nn.Linear(text_hidden + values + 2 * TRAJECTORY_FREQUENCIES, text_hidden),
            nn.SiLU(),
            nn.Linear(text_hidden, text_hidden),
            nn.SiLU(),
            nn.Linear(text_hidden, 2 * slots),
        )
        pixel_inputs = slots * 2 * (2 * OFFSET_FREQUENCIES + 1) + 2 * (2 * PLACE_FREQUENCIES + 1)
        self.pixel_in = nn.Linear(pixel_inputs, hidden)
        self.text_in = nn.Linear(text_hidden, hidden)
        self.pixel_body = nn.Sequential(
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, latent_channels),
        )
        self.quantile_text = nn.Sequential(nn.Linear(text_tokens * text_dim, 128), nn.SiLU())
        self.quantile_body = nn.Sequential(
            nn.Linear(128 + 2 * QUANTILE_FREQUENCIES * values, 128),
            nn.SiLU(),
            nn.Linear(128, 128),
            nn.SiLU(),
            nn.Linear(128, values),
        )
        ys, xs = torch.meshgrid(
            (torch.arange(latent_height) + 0.5) / latent_height,
            (torch.arange(latent_width) + 0.5) / latent_width,
            indexing="ij",
        )
        self.register_buffer("grid", torch.stack([xs, ys], -1).view(1, -1, 2), persistent=False)

    def embed(self, text: torch.Tensor) -> torch.Tensor:
        """``e = SiLU(W_c vec(c))`` ``(N, text_hidden)`` of caption states ``(N, L, D)``."""
        check_text_states(self.config, text)
        return self.text(text.flatten(1).to(self.text[0].weight.dtype))

    def placement_quantiles(self, text: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``q(c, tau)`` ``(N, 3 S)``: value ``d`` is the ``tau_d``-quantile of placement value ``d`` given the
        caption states ``text`` ``(N, L, D)``; ``tau`` is ``(N, 3 S)`` in ``[0, 1]``."""
        check_text_states(self.config, text)
        dtype = self.quantile_text[0].weight.dtype
        hidden = [self.quantile_text(text.flatten(1).to(dtype)), fourier_features(tau, QUANTILE_FREQUENCIES).to(dtype)]
        return self.quantile_body(torch.cat(hidden, -1)).float()

    def trajectory(self, embedding: torch.Tensor, placement: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``o(c, s, p)`` ``(N, S, 2)``: each object's centre at position ``p`` ``(N,)`` minus its start."""
        dtype = embedding.dtype
        where = fourier_features(position.float()[:, None], TRAJECTORY_FREQUENCIES).to(dtype)
        hidden = torch.cat([embedding, placement.to(dtype), where], -1)
        return self.trajectory_body(hidden).float().view(-1, self.config.slots, 2)

    def field(
        self, embedding: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """Latent frames ``(N, C, h, w)`` with objects at ``centres`` ``(N, S, 2)`` of ``radii`` ``(N, S)``
        (frame fractions); ``present`` ``(N, S)`` is 1 for an object in the caption, 0 for an empty slot."""
        cfg = self.config
        grid = self.grid.to(centres.device)
        offsets = (grid[:, :, None] - centres[:, None].float()) / radii.float().clamp_min(1e-3)[:, None, :, None]
        far = torch.full_like(offsets, FAR)
        offsets = torch.where(present[:, None, :, None] > 0, offsets, far).clamp(-FAR, FAR) / FAR  # (N, P, S, 2)
        place = grid.expand(offsets.shape[0], -1, -1)
        features = [
            fourier_features(offsets, OFFSET_FREQUENCIES).flatten(2),
            offsets.flatten(2),
            fourier_features(place, PLACE_FREQUENCIES),
            place,
        ]
        dtype = self.pixel_in.weight.dtype
        hidden = self.pixel_in(torch.cat(features, -1).to(dtype)) + self.text_in(embedding)[:, None]
        out = self.pixel_body(hidden)  # (N, P, C)
        return out.transpose(1, 2).reshape(-1, cfg.latent_channels, cfg.latent_height, cfg.latent_width)

    def draw_placement(self, text: torch.Tensor, seed: int) -> torch.Tensor:
        """A placement ``(N, 3 S)`` for caption states ``(N, L, D)``: one ``tau ~ U(0, 1)^{3S}`` from ``seed``
        serves every row, so the frames of one caption share a placement and every worker draws the same."""
        generator = torch.Generator().manual_seed(frame_seed(seed, 0, "layout"))
        tau = torch.rand(1, self.config.slots * PLACEMENT_VALUES, generator=generator)
        return self.placement_quantiles(text, tau.to(text.device).expand(text.shape[0], -1))

    def frame_latents(self, text: torch.Tensor, positions: torch.Tensor, seed: int) -> torch.Tensor:
        """The layout ``(N, C, h, w)`` of frames at ``positions`` ``(N,)`` with caption states ``(N, L, D)``:
        the object field at the trajectory of a placement drawn from ``seed``."""
        placement = self.draw_placement(text, seed)
        slots = placement.view(-1, self.config.slots, PLACEMENT_VALUES)
        embedding = self.embed(text)
        centres = slots[..., :2] + self.trajectory(embedding, placement, positions)
        radii = slots[..., 2]
        return self.field(embedding, centres, radii, (radii > ABSENT_RADIUS).float())
