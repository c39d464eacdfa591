"""The model-family seam: choosing a family, the pipeline knowing none by name, and a new family plugging in."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from videogen.api import render_job
from videogen.config import ModelConfig, load_job
from videogen.errors import ModelLoadError
from videogen.models.family import family_named, family_names
from videogen.models.loader import load_bundle, model_family

PLUGIN = '''
"""A model family that lives outside videogen: a UNet3D-shaped UNet under a class name videogen does not know."""

from diffusers import AutoencoderKL, UNet3DConditionModel

from videogen.models.family import ModelFamily
from videogen.models.loader import ModelBundle, load_component, load_scheduler_config, load_text_model


class EchoUNet(UNet3DConditionModel):
    pass


class EchoFamily(ModelFamily):
    name = "echo"
    unet_class_names = ("EchoUNet",)

    def unet_class(self):
        return EchoUNet

    def load(self, cfg, device, dtype):
        unet = load_component(cfg, "unet", EchoUNet, "UNet", torch_dtype=dtype)
        vae = load_component(cfg, "vae", AutoencoderKL, "VAE", torch_dtype=dtype)
        text_encoder, tokenizer = load_text_model(cfg, dtype, unet.config.cross_attention_dim)
        return ModelBundle(self, unet, vae, text_encoder, tokenizer, load_scheduler_config(cfg), device, dtype)


FAMILY = EchoFamily()
'''


@pytest.fixture
def echo_plugin(tmp_path, monkeypatch):
    """The plugin above installed the way a package installs it: a module plus an entry point on sys.path."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "videogen_echo_family.py").write_text(PLUGIN)
    info = root / "videogen_echo_family-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: videogen-echo-family\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[videogen.model_families]\necho = videogen_echo_family:FAMILY\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root


@pytest.fixture
def echo_model(tiny_model_dir, tmp_path):
    """The tiny model with its UNet saved as the plugin's class."""
    folder = tmp_path / "echo-model"
    shutil.copytree(tiny_model_dir, folder)
    config = folder / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "EchoUNet"}))
    return folder


def test_importing_the_pipeline_and_the_sampler_imports_no_family():
    code = (
        "import sys, videogen.pipeline, videogen.sampling, videogen.api; "
        "print([m for m in sys.modules if m.startswith('videogen.models.families.')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_family_comes_from_the_unet_class(tiny_model_dir):
    assert model_family(ModelConfig(path=str(tiny_model_dir))).name == "unet3d"
    assert load_bundle(ModelConfig(path=str(tiny_model_dir), family="unet3d")).family.name == "unet3d"


def test_an_unknown_family_name_lists_the_known_ones(tiny_model_dir):
    with pytest.raises(ModelLoadError, match=r"model.family: 'nope' is not a model family \(known: auto, .*unet3d"):
        load_bundle(ModelConfig(path=str(tiny_model_dir), family="nope"))


def test_a_unet_no_family_claims_is_refused_naming_its_class(echo_model):
    with pytest.raises(ModelLoadError, match="the UNet in .* is EchoUNet, which no model family claims"):
        load_bundle(ModelConfig(path=str(echo_model)))


def test_a_plugin_family_is_found_by_its_entry_point(echo_plugin, echo_model):
    assert "echo" in family_names()
    bundle = load_bundle(ModelConfig(path=str(echo_model)))
    assert bundle.family is family_named("echo")
    assert type(bundle.unet).__name__ == "EchoUNet"


@pytest.mark.slow
def test_a_plugin_family_renders_on_two_clip_workers_like_on_one(echo_plugin, echo_model, make_job, tmp_path):
    """Nothing in videogen/pipeline.py or parallel/ knows the family: the seam carries it to every worker."""
    frames = {}
    for workers in (1, 2):
        job = load_job(
            make_job(
                model={"path": str(echo_model)},
                video={"width": 32, "height": 32, "num_frames": 8},
                parallel={"launcher": "local", "clip": workers, "threads_per_worker": 1},
                output={"path": str(tmp_path / f"frames-{workers}")},
            )
        ).config
        result = render_job(job, progress=False)
        meta = json.loads((tmp_path / f"frames-{workers}.meta.json").read_text())
        assert meta["mesh"]["clip"] == workers and result.frames == 8
        frames[workers] = np.stack([iio.imread(p) for p in sorted(result.output.glob("*.png"))])
    assert frames[2].shape == frames[1].shape == (8, 32, 32, 3)
    assert np.abs(frames[2].astype(int) - frames[1].astype(int)).max() <= 1


def test_build_tiny_model_names_the_unknown_family(tmp_path, capsys):
    from videogen.cli import main

    assert main(["build-tiny-model", str(tmp_path / "m"), "--family", "nope"]) != 0
    assert "--family: 'nope' is not a model family" in capsys.readouterr().err
