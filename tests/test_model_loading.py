"""The model loader: real diffusers folders, component overrides, clear errors for bad ones."""

from __future__ import annotations

import shutil

import pytest
import torch

from videogen.config import ModelConfig
from videogen.errors import ConfigError, ModelLoadError
from videogen.models.attention import set_attention_backend
from videogen.models.loader import load_bundle


def test_loads_every_component_in_the_requested_dtype(tiny_model_dir):
    bundle = load_bundle(ModelConfig(path=str(tiny_model_dir), dtype="bf16"))
    assert bundle.unet.dtype == bundle.vae.dtype == bundle.text_encoder.dtype == torch.bfloat16
    assert bundle.vae_scale_factor == 4 and bundle.size_multiple == 8
    assert bundle.scheduler_config["beta_schedule"] == "scaled_linear"
    assert not bundle.unet.training


def test_component_override_takes_the_unet_from_another_folder(tiny_model_dir, tmp_path):
    from videogen.models.tiny import tiny_unet

    other = tmp_path / "other-unet"
    tiny_unet(seed=5).save_pretrained(other, safe_serialization=True)  # files directly in the folder
    bundle = load_bundle(ModelConfig(path=str(tiny_model_dir), unet=str(other)))
    reference = tiny_unet(seed=5)
    name, param = next(iter(reference.state_dict().items()))
    assert torch.equal(bundle.unet.state_dict()[name], param)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model.path: model folder .*/nowhere does not exist"):
        load_bundle(ModelConfig(path=str(tmp_path / "nowhere")))


def test_incomplete_folder_names_the_missing_component(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match=r"model.path: .*broken has no vae/ folder with config.json"):
        load_bundle(ModelConfig(path=str(broken)))


def test_pickled_weights_are_refused(tiny_model_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    weights = next((pickled / "unet").glob("*.safetensors"))
    weights.rename(weights.with_name("diffusion_pytorch_model.bin"))
    with pytest.raises(ModelLoadError, match="pickled .* safetensors only"):
        load_bundle(ModelConfig(path=str(pickled)))


def test_corrupt_config_is_reported(tiny_model_dir, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="unet.config.json: not a readable JSON config"):
        load_bundle(ModelConfig(path=str(corrupt)))


def test_mismatched_components_are_reported(tiny_model_dir, tmp_path):
    from videogen.models.tiny import TinySpec, tiny_unet

    wide = tmp_path / "wide-unet"
    tiny_unet(TinySpec(text_dim=32)).save_pretrained(wide / "unet", safe_serialization=True)
    with pytest.raises(ModelLoadError, match="does not match the UNet's cross_attention_dim"):
        load_bundle(ModelConfig(path=str(tiny_model_dir), unet=str(wide)))


def test_xformers_on_cpu_is_a_clear_error(tiny_model_dir):
    bundle = load_bundle(ModelConfig(path=str(tiny_model_dir)))
    with pytest.raises(ConfigError, match="xformers runs on CUDA only"):
        set_attention_backend(bundle.unet, "xformers")


def test_cuda_device_without_cuda_is_a_clear_error(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="no usable CUDA device"):
        load_bundle(ModelConfig(path=str(tiny_model_dir), device="cuda"))


def test_the_shapes_name_without_a_bundled_model_says_how_to_make_one(monkeypatch, tmp_path):
    import videogen.models.bundled as bundled
    from videogen.errors import ModelLoadError

    monkeypatch.setattr(bundled, "SHAPES_DIR", tmp_path / "absent")
    with pytest.raises(ModelLoadError, match="shapes: the bundled model is missing.*videogen train"):
        load_bundle(ModelConfig(path="shapes"))
