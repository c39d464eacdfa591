"""The splice test: the caption's mean clip stands in for the model at the highest noise levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videogen.config import ModelConfig
from videogen.models.loader import load_bundle
from videogen.models.text_condition import unet_text_kwargs
from videogen.sampling import make_scheduler
from videogen.train.probe import probe_world
from videogen.train.splice import CaptionMeanStart, caption_mean_latents, spliced_directions


@pytest.fixture(scope="module")
def shapes():
    return load_bundle(ModelConfig(path="shapes"))


def test_the_caption_mean_is_the_average_of_its_redrawn_clips_latents(shapes):
    spec, caption = probe_world(8).spec, "a red circle moving right"
    rng = np.random.default_rng(3)
    first = caption_mean_latents(shapes.vae, caption, spec, rng, 1)
    second = caption_mean_latents(shapes.vae, caption, spec, rng, 1)
    both = caption_mean_latents(shapes.vae, caption, spec, np.random.default_rng(3), 2)
    assert both.shape == (1, 4, 8, 16, 16)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(both, (first + second) / 2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="blob"):
        caption_mean_latents(shapes.vae, "a red blob moving right", spec, rng, 1)


def test_above_until_the_output_implies_the_mean_as_the_clean_latent_and_below_it_the_unet_answers(shapes):
    scheduler = make_scheduler("ddim", shapes.scheduler_config)
    abars = scheduler.alphas_cumprod
    mean = torch.randn(1, 4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    call = CaptionMeanStart(shapes.unet, mean, 700, abars, v=True)
    sample = torch.randn(2, 4, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    context = torch.randn(2, 24, 64, generator=torch.Generator().manual_seed(2))
    for t in (700, 960):
        v = call(sample, torch.tensor(t), context, ("uncond", "cond"))
        a = abars[t]
        x0 = a.sqrt() * sample - (1 - a).sqrt() * v  # the clean latent a v-prediction implies
        torch.testing.assert_close(x0, mean.expand_as(sample), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        below = call(sample, torch.tensor(699), context, ("uncond", "cond"))
        direct = shapes.unet(sample, torch.tensor(699), **unet_text_kwargs(shapes.unet, context)).sample
    torch.testing.assert_close(below, direct)


@pytest.mark.slow
def test_placing_each_frame_as_the_caption_says_at_high_noise_carries_the_prompted_direction(shapes):
    """The bundled model alone, and started from the frame-blind mean, miss both directions; started from
    the frame-aware mean (timesteps >= 700) it keeps them: what it lacks is placement at high noise."""
    alone = spliced_directions(shapes, 1000, prompts=2, draws=1)
    blind = spliced_directions(shapes, 700, frame_aware=False, prompts=2, draws=12)
    aware = spliced_directions(shapes, 700, frame_aware=True, prompts=2, draws=12)
    # counted within 45 degrees: the six tracks here are 9-20 degrees (frame-aware) or 80-150 degrees (the
    # others) off the prompt, far from that line on either side, so the outcome does not hang on rounding
    assert (alone.near, blind.near, aware.near) == (0, 0, 2)
    assert aware.colour == 2 and aware.renders == 2
