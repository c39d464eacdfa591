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


def family_job(folder, model: dict, **sections):
    """A 32x32, 8-frame, 3-step job on ``model`` (a ``model:`` section) with local workers and section
    overrides, written to ``folder/job.yaml`` and loaded: the model-family tests' common job."""
    import yaml

    from videogen.config import load_job

    spec = {
        "model": model,
        "prompts": {"text": "a red balloon", "negative": "blurry"},
        "video": {"width": 32, "height": 32, "num_frames": 8, "fps": 8},
        "sampler": {"name": "auto", "steps": 3, "guidance_scale": 7.5},
        "noise": {"seed": 3},
        "parallel": {"launcher": "local"},
        "output": {"path": str(folder / "out.mp4")},
    }
    for section, values in sections.items():
        spec[section].update(values)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_job(str(path)).config


@pytest.fixture(scope="session")
def svd_dir(tmp_path_factory):
    """The tiny Stable Video Diffusion model, built through the CLI."""
    from videogen import cli

    out = tmp_path_factory.mktemp("models") / "tiny-svd"
    assert cli.main(["build-tiny-model", str(out), "--family", "svd"]) == 0
    return out


@pytest.fixture(scope="session")
def first_frame(tmp_path_factory):
    """A 32x32 random RGB image, the SVD tests' first frame."""
    import imageio.v3 as iio
    import numpy as np

    path = tmp_path_factory.mktemp("images") / "first.png"
    iio.imwrite(path, (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    return path
