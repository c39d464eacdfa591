"""Shared fixtures: the tiny model written once per session through the real writer."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


torch.set_num_threads(1)  # the tiny models are faster on one thread, and CI has two cores for everything


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from videogen.models.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-t2v", seed=0)


@pytest.fixture(scope="module")
def ray_cluster():
    """A private Ray instance on 127.0.0.1 for one test module, stopped after it."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        namespace="videogen",
    )
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(1234)
    yield


@pytest.fixture
def make_job(tmp_path, tiny_model_dir):
    """Write a small job file (tiny model, 64x64, 8 frames, 3 steps) with section overrides."""
    return lambda **sections: _write_job(tmp_path, tiny_model_dir, **sections)


def _write_job(tmp_path, model_dir, **sections) -> str:
    import yaml

    job = {
        "model": {"path": str(model_dir)},
        "prompts": {"text": "a red balloon", "negative": "blurry"},
        "video": {"width": 64, "height": 64, "num_frames": 8, "fps": 8},
        "sampler": {"name": "ddim", "steps": 3, "guidance_scale": 7.5},
        "noise": {"seed": 3},
        "output": {"path": str(tmp_path / "out.mp4"), "decode_chunk_frames": 3},
    }
    for section, values in sections.items():
        job.setdefault(section, {}).update(values)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)
