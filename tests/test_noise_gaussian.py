"""Initial noise is a function of (seed, global frame index) only."""

from __future__ import annotations

import torch

from videogen.noise.gaussian import frame_seed, video_noise


def test_a_frame_noise_does_not_depend_on_the_split():
    whole = video_noise(7, range(10), 4, 8, 8)
    parts = torch.cat([video_noise(7, range(0, 3), 4, 8, 8), video_noise(7, range(3, 10), 4, 8, 8)], dim=2)
    assert torch.equal(whole, parts)
    assert torch.equal(video_noise(7, range(4, 5), 4, 8, 8), whole[:, :, 4:5])


def test_streams_steps_and_seeds_are_independent():
    seeds = {
        frame_seed(1, 0),
        frame_seed(2, 0),
        frame_seed(1, 1),
        frame_seed(1, 0, "step"),
        frame_seed(1, 0, "step", 1),
    }
    assert len(seeds) == 5


def test_noise_is_standard_normal():
    noise = video_noise(0, range(16), 4, 32, 32)
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02
