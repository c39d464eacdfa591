"""The object layout prior (docs/layout.md): its quantile network learns the placement distribution, the shapes
world gives each clip's true object tracks, and a layout is drawn from the seed alone."""

from __future__ import annotations

import pytest
import torch

from videogen.data.measure import parse_caption
from videogen.errors import ModelLoadError
from videogen.models.layout_prior import LayoutPrior, layout_latents, load_layout_prior
from videogen.models.object_layout import ObjectLayoutPrior, pinball_loss
from videogen.train.batches import ShapesSource
from videogen.train.config import DataSection

TOKENS, DIM = 3, 4


def _prior(**config) -> ObjectLayoutPrior:
    """A random object prior whose placements are objects of radius about 0.2 near the middle of the frame."""
    torch.manual_seed(0)
    prior = ObjectLayoutPrior(4, 4, 4, text_tokens=TOKENS, text_dim=DIM, hidden=16, text_hidden=16, **config)
    with torch.no_grad():
        prior.quantile_body[-1].bias.copy_(torch.tensor([0.5, 0.5, 0.2]).repeat(prior.config.slots))
    return prior


def test_the_quantile_network_learns_each_captions_placement_distribution():
    """Caption A starts its object with x ~ U(0.1, 0.3), caption B with x ~ U(0.6, 0.9); every other value is
    fixed. Trained with the pinball loss at tau ~ U(0, 1), q(c, tau) must be each caption's tau-quantile,
    so placements drawn with tau ~ U(0, 1) follow each caption's own distribution."""
    prior = _prior(slots=1)
    captions = torch.randn(2, TOKENS, DIM, generator=torch.Generator().manual_seed(1))
    ranges = torch.tensor([[0.1, 0.3], [0.6, 0.9]])
    optimizer = torch.optim.Adam(prior.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(1500):
        which = torch.randint(0, 2, (128,), generator=g)
        low, high = ranges[which, 0], ranges[which, 1]
        x = low + (high - low) * torch.rand(128, generator=g)
        target = torch.stack([x, torch.full_like(x, 0.5), torch.full_like(x, 0.2)], -1)
        tau = torch.rand(128, 3, generator=g)
        loss = pinball_loss(prior.placement_quantiles(captions[which], tau), tau, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for caption, (low, high) in zip(captions, ranges.tolist(), strict=True):
            for level in (0.1, 0.5, 0.9):
                tau = torch.full((1, 3), level)
                q = prior.placement_quantiles(caption[None], tau)[0]
                assert q[0] == pytest.approx(low + level * (high - low), abs=0.03)
                assert q[1:].tolist() == pytest.approx([0.5, 0.2], abs=0.03)


def test_the_world_gives_each_objects_true_track_and_radius_in_caption_order():
    source = ShapesSource(DataSection(width=48, height=32, frames=5, seed=3))
    indices = list(range(40))
    centres, radii, present = source.object_tracks(indices, slots=2)
    assert centres.shape == (40, 5, 2, 2) and radii.shape == present.shape == (40, 2)
    two = 0
    for index, track, radius, here in zip(indices, centres, radii, present, strict=True):
        clip = source.clips.clip(index)
        objects = clip.scene.objects
        assert [obj.colour for obj in objects] == [obj.colour for obj in parse_caption(clip.caption).objects]
        assert here.tolist() == [1.0] * len(objects) + [0.0] * (2 - len(objects))
        for slot, obj in enumerate(objects):
            assert track[:, slot] * [48, 32] == pytest.approx(clip.centres[:, slot], abs=1e-3)
            assert track[0, slot] * [48, 32] == pytest.approx(obj.start, abs=1e-3)
            assert radius[slot] * 32 == pytest.approx(obj.radius, abs=1e-4)
        assert not track[:, len(objects) :].any() and not radius[len(objects) :].any()
        two += len(objects) == 2
    assert two > 0


def test_a_layout_is_drawn_from_the_seed_alone_and_frames_of_one_caption_share_a_placement():
    prior = _prior(slots=2)
    text = torch.randn(1, TOKENS, DIM)
    first, again, other = (layout_latents(prior, text, range(5), 5, 4, 4, seed) for seed in (7, 7, 8))
    assert first.shape == (1, 4, 5, 4, 4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (prior.draw_placement(text, 7) - prior.draw_placement(text, 8)).abs().max() > 1e-3
    placement = prior.draw_placement(text.expand(5, -1, -1), 7)
    assert torch.equal(placement[0], placement[4])
    mean = LayoutPrior(4, 4, 4, text_tokens=TOKENS, text_dim=DIM, hidden=16, frequencies=2)
    assert torch.equal(
        layout_latents(mean, text, range(5), 5, 4, 4, 7), layout_latents(mean, text, range(5), 5, 4, 4, 8)
    )


def test_the_object_field_puts_an_absent_object_nowhere_and_follows_a_present_one():
    prior = _prior(slots=2)
    embedding = prior.embed(torch.randn(1, TOKENS, DIM))
    radii = torch.tensor([[0.2, 0.0]])
    here = prior.field(embedding, torch.tensor([[[0.3, 0.3], [0.9, 0.9]]]), radii, torch.tensor([[1.0, 0.0]]))
    moved_absent = prior.field(embedding, torch.tensor([[[0.3, 0.3], [0.1, 0.2]]]), radii, torch.tensor([[1.0, 0.0]]))
    moved = prior.field(embedding, torch.tensor([[[0.7, 0.6], [0.9, 0.9]]]), radii, torch.tensor([[1.0, 0.0]]))
    assert torch.equal(here, moved_absent)
    assert not torch.allclose(here, moved)


def test_a_layout_prior_folder_of_either_kind_loads_as_its_kind(tmp_path):
    _prior(slots=2).save_pretrained(tmp_path / "objects", safe_serialization=True)
    assert isinstance(load_layout_prior(tmp_path / "objects"), ObjectLayoutPrior)
    config = tmp_path / "objects" / "config.json"
    config.write_text(config.read_text().replace("ObjectLayoutPrior", "UNet3DConditionModel"))
    with pytest.raises(ModelLoadError, match="not a layout prior"):
        load_layout_prior(tmp_path / "objects")
