"""A text-to-layout prior: the mean clean latent of a frame given the caption and the frame's place in the clip.

``m_theta(c, p) ~ E[z_0^f | c, p = f / (F - 1)]``, one latent frame ``(C, h, w)`` from the caption's text
encoder states ``c`` (``(L, D)``, flattened) and the frame's position ``p`` in ``[0, 1]``:

    e = SiLU(W_c vec(c)),   gamma(p) = [sin(pi k p), cos(pi k p)]_{k=1..K}
    m = MLP([e, gamma(p)])  reshaped to (C, h, w)

trained by regression on the VAE latents of captioned clips (``|m_theta(c, p_f) - z_0^f|^2``, the
``layout`` stage of ``videogen train``), so it learns the conditional mean: where, frame by frame, the
caption's objects are on average. A UNet3D has no temporal position input, so at the highest noise
levels, where its prediction is that same mean, it cannot place an object early on one side and late on
the other; this prior can. A render starts from it as image-to-video starts from an image
(SDEdit, Meng et al., ICLR 2022): the latents of step ``k`` are ``add_noise(m, eps, t_k)`` and the UNet
runs the remaining steps. With a deterministic sampler that is exactly the trajectory whose
clean-latent prediction is ``m`` at every step before ``k``.

This prior's layout is a mean over every start and size, so its objects are soft blobs;
:class:`videogen.models.object_layout.ObjectLayoutPrior` draws one sharp layout instead. ``layout_latents``
and ``load_layout_prior`` serve both.

On disk (diffusers layout, safetensors only): ``<folder>/config.json`` and
``<folder>/diffusion_pytorch_model.safetensors``; a model folder carries it as ``<model>/layout_prior/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import CONFIG_NAME
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME as WEIGHTS_NAME
from torch import nn

from videogen.errors import ModelLoadError
from videogen.models.object_layout import ObjectLayoutPrior, check_text_states, fourier_features

LAYOUT_DIRNAME = "layout_prior"


class LayoutPrior(ModelMixin, ConfigMixin):
    """``(text (N, L, D), position (N,)) -> (N, C, h, w)``: the mean latent frame of the caption at that position."""

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        latent_height: int = 16,
        latent_width: int = 16,
        text_tokens: int = 24,
        text_dim: int = 64,
        hidden: int = 256,
        frequencies: int = 6,
    ):
        super().__init__()
        self.text = nn.Sequential(nn.Linear(text_tokens * text_dim, hidden), nn.SiLU())
        self.body = nn.Sequential(
            nn.Linear(hidden + 2 * frequencies, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, latent_channels * latent_height * latent_width),
        )

    def forward(self, text: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        check_text_states(cfg, text)
        dtype = self.text[0].weight.dtype
        where = fourier_features(position.float()[:, None], cfg.frequencies).to(dtype)
        hidden = torch.cat([self.text(text.flatten(1).to(dtype)), where], -1)
        return self.body(hidden).view(-1, cfg.latent_channels, cfg.latent_height, cfg.latent_width)

    def frame_latents(self, text: torch.Tensor, positions: torch.Tensor, seed: int) -> torch.Tensor:
        """The layout ``(N, C, h, w)`` of frames at ``positions`` ``(N,)``: the mean, the same for every seed."""
        return self(text, positions)


def frame_positions(frames: range, num_frames: int) -> torch.Tensor:
    """``p = f / (F - 1)`` for the global frames ``f`` (0 for a one-frame video)."""
    return torch.tensor([f / max(num_frames - 1, 1) for f in frames], dtype=torch.float32)


AnyLayoutPrior = LayoutPrior | ObjectLayoutPrior
"""Either kind of layout prior: both give a layout by ``frame_latents(text, positions, seed)``."""


@torch.no_grad()
def layout_latents(
    prior: AnyLayoutPrior, text: torch.Tensor, frames: range, num_frames: int, height: int, width: int, seed: int
) -> torch.Tensor:
    """The layout of the global ``frames`` of a ``num_frames`` video, ``(1, C, len(frames), height, width)`` float32.

    ``text`` is ``(1, L, D)`` (one caption for every frame) or ``(len(frames), L, D)`` (each frame's own);
    ``seed`` draws an object prior's placement (the mean prior has none). A latent size other than the
    prior's is reached by bilinear resizing (positions are fractions of the frame, so a layout keeps its
    meaning)."""
    device = next(prior.parameters()).device
    text = text.to(device)
    if text.shape[0] == 1:
        text = text.expand(len(frames), -1, -1)
    out = prior.frame_latents(text, frame_positions(frames, num_frames).to(device), seed).float()  # (F, C, h, w)
    if out.shape[-2:] != (height, width):
        out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
    return out.permute(1, 0, 2, 3)[None].contiguous()


def layout_velocity(layout: torch.Tensor) -> tuple[float, float]:
    """The layout's mean motion ``(v_x, v_y)`` in latent pixels per frame (x right, y down), from ``(1, C, F, h, w)``.

    The one translation that best explains the change from frame to frame: the least-squares solution of
    the brightness-constancy equation ``m_t + v . grad m = 0`` over every channel, pixel and pair of
    consecutive frames (a global Lucas & Kanade, IJCAI 1981):

        [sum m_x^2    sum m_x m_y] [v_x]     [sum m_x m_t]
        [sum m_x m_y  sum m_y^2  ] [v_y] = - [sum m_y m_t]

    with central spatial differences (zero at the border) averaged over the two frames and ``m_t`` their
    difference. A conditional mean of objects that move at ``v`` is a blurred pattern that translates by
    ``v`` every frame over a still background, so this recovers ``v``. (0, 0) for one frame or a flat layout.
    """
    m = layout[0].double()  # (C, F, h, w)
    if m.shape[1] < 2:
        return 0.0, 0.0
    gx, gy = torch.zeros_like(m), torch.zeros_like(m)
    gx[..., 1:-1] = (m[..., 2:] - m[..., :-2]) / 2
    gy[..., 1:-1, :] = (m[..., 2:, :] - m[..., :-2, :]) / 2
    gx, gy, gt = (gx[:, 1:] + gx[:, :-1]) / 2, (gy[:, 1:] + gy[:, :-1]) / 2, m[:, 1:] - m[:, :-1]
    a = torch.stack([torch.stack([(gx * gx).sum(), (gx * gy).sum()]), torch.stack([(gx * gy).sum(), (gy * gy).sum()])])
    b = -torch.stack([(gx * gt).sum(), (gy * gt).sum()])
    if torch.linalg.det(a).abs() <= 1e-12 * max(float(a.diagonal().sum()) ** 2, 1e-30):
        return 0.0, 0.0
    v = torch.linalg.solve(a, b)
    return float(v[0]), float(v[1])


def find_layout_prior(model_path: str | Path) -> Path | None:
    """``<model>/layout_prior/`` when the model folder (or bundled model name) has one."""
    from videogen.models.bundled import model_root

    folder = model_root(str(model_path)) / LAYOUT_DIRNAME
    return folder if (folder / CONFIG_NAME).is_file() else None


LAYOUT_CLASSES = {cls.__name__: cls for cls in (LayoutPrior, ObjectLayoutPrior)}


def load_layout_prior(folder: str | Path, device: torch.device | str = "cpu") -> AnyLayoutPrior:
    """Load a layout prior folder (safetensors only) in float32, of the kind its ``config.json`` names."""
    folder = Path(folder).expanduser()
    if not (folder / CONFIG_NAME).is_file():
        raise ModelLoadError(f"{folder}: not a layout prior folder (no {CONFIG_NAME})")
    if not (folder / WEIGHTS_NAME).is_file():
        raise ModelLoadError(f"{folder}: no {WEIGHTS_NAME} (layout priors load from safetensors only)")
    try:
        name = json.loads((folder / CONFIG_NAME).read_text()).get("_class_name", LayoutPrior.__name__)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{folder / CONFIG_NAME}: not readable JSON: {error}") from error
    if name not in LAYOUT_CLASSES:
        raise ModelLoadError(f"{folder}: a {name!r}, not a layout prior (known: {', '.join(LAYOUT_CLASSES)})")
    try:
        prior = LAYOUT_CLASSES[name].from_pretrained(str(folder), use_safetensors=True, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"{folder}: cannot load the layout prior: {str(error).splitlines()[0]}") from error
    return prior.to(device).eval()
