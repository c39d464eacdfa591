"""How close two renders (or a render and an image) are, and whether a render keeps its object.

* :func:`psnr`: ``10 log10(255^2 / MSE)`` over every pixel and channel of two uint8 images or videos
  (infinite when they are equal); used for a first frame against its input image, and for an
  approximate parallel render against the exact one (all frames pooled).
* :func:`ssim`: the structural similarity of Wang et al. (2004) with their constants
  (``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = 255``) and an 11-tap Gaussian window of sigma 1.5,
  per channel, averaged over pixels, channels and frames.
* :func:`identity_rate`: the share of frames where the prompted object is there as prompted.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from videogen.data.measure import dominant_objects
from videogen.data.shapes import PALETTE, SHAPES

__all__ = ["identity_rate", "psnr", "ssim", "vae_round_trip"]


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have one shape, got {a.shape} and {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"images are uint8, got {a.dtype} and {b.dtype}")
    if a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"images are RGB (..., H, W, 3), got shape {a.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 RGB images or videos of one shape: ``10 log10(255^2 / mean((a - b)^2))``."""
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 RGB images ``(H, W, 3)`` or videos ``(F, H, W, 3)`` of one shape.

    Per channel, with local means ``mu``, variances ``s^2`` and covariance ``s_ab`` under a Gaussian
    window (sigma 1.5, 11 taps, borders reflected):
    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))``,
    averaged over every pixel, channel and frame. 1 for equal images.
    """
    x, y = _pair(a, b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x = x.reshape(-1, *x.shape[-3:])
    y = y.reshape(-1, *y.shape[-3:])

    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    values = []
    for fa, fb in zip(x, y, strict=True):
        mu_a, mu_b = blur(fa), blur(fb)
        var_a = blur(fa * fa) - mu_a**2
        var_b = blur(fb * fb) - mu_b**2
        cov = blur(fa * fb) - mu_a * mu_b
        num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
        den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
        values.append(float(np.mean(num / den)))
    return float(np.mean(values))


def identity_rate(frames: np.ndarray, colour: str, shape: str, *, min_area: int | None = None) -> float:
    """The share of frames where the largest blob of ``colour`` is there and has ``shape``.

    ``(1/F) sum_t [colour's largest blob in frame t exists and classify_shape names it shape]``, with
    blobs from :func:`videogen.data.measure.dominant_objects`; in [0, 1].
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"a video is (F, H, W, 3), got shape {frames.shape}")
    if colour not in PALETTE:
        raise ValueError(f"colour {colour!r}: known colours are {', '.join(PALETTE)}")
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: known shapes are {', '.join(SHAPES)}")
    hits = 0
    for frame in frames:
        blob = next((b for b in dominant_objects(frame, min_area=min_area) if b.colour == colour), None)
        hits += blob is not None and blob.shape == shape
    return hits / len(frames)


def vae_round_trip(vae, image: np.ndarray) -> np.ndarray:
    """The image ``(H, W, 3)`` uint8 encoded and decoded by ``vae`` as image-to-video does: ``D(z0)``
    with ``z0`` the posterior mean (:func:`videogen.noise.image_prior.encode_image_latent`), as uint8.

    The best first frame a render through this VAE can show: :func:`psnr` of it against the image is
    the ceiling a first frame's PSNR is judged against.
    """
    import torch

    from videogen.decode import decode_chunks, to_uint8
    from videogen.io.image import to_tensor
    from videogen.noise.image_prior import encode_image_latent

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"an image is uint8 (H, W, 3), got {image.dtype} {image.shape}")
    with torch.no_grad():
        z0 = encode_image_latent(vae, to_tensor(image))
    return to_uint8(next(decode_chunks(vae, z0, 1)))[0]
