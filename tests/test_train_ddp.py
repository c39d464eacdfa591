"""Data-parallel training: W workers with batch B give the weights one worker gives with batch W * B.

The oracle is one in-process run (batch 2B) of a tiny two-stage job: two VAE steps, then two UNet +
text-encoder steps on that VAE. The DDP runs, on 2 gloo processes (``train_local``) and on 2 Ray Train
workers (``videogen train`` with ``ray.workers=2``), use batch B and must reproduce, per stage:

* the gradients: AdamW's first moment ``m = 0.09 g_1 + 0.1 g_2`` after two steps (the all-reduced,
  clipped gradients), ``max |m - m_ref| / max |m_ref|``, to float32 reduction-order noise;
* the logged losses (the mean over all workers' samples);
* the live and EMA weights (``ema_decay: 0`` makes them equal), relative to the largest update
  ``max |w_ref - w_init|``. This bound is looser: AdamW's step ``lr * m / (sqrt(v) + eps)`` turns
  a gradient that is zero in exact arithmetic (an attention key bias: ``sqrt(v)`` ~ 1e-12 here)
  into a step of about ``lr * noise / eps``, so those elements differ by up to a few percent of the
  largest update while the gradients agree to 1e-6.

``unet.dropout: 0``: dropout masks come from each rank's global generator, so with dropout the DDP run
equals the one-worker run in distribution only, not sample by sample.
"""

from __future__ import annotations

import time

import pytest
import torch
import yaml

from parallel.train_ddp import _training_error, train_local
from videogen.errors import ConfigError, MediaError, VideogenError
from videogen.train.config import load_train_job
from videogen.train.run import train_job

TINY = {
    "stages": ["vae", "unet"],
    "seed": 0,
    "log_every": 0,
    "data": {"width": 16, "height": 16, "frames": 4},
    "model": {
        "architecture": {
            "vae_channels": [8, 8],
            "unet_channels": [8, 16],
            "norm_groups": 4,
            "text_dim": 16,
            "attention_head_dim": 4,
            "text_heads": 2,
        }
    },
    "vae": {"steps": 2, "batch_size": 4, "ema_decay": 0.0, "warmup_steps": 0},
    "unet": {"steps": 2, "batch_size": 2, "ema_decay": 0.0, "warmup_steps": 0, "dropout": 0.0},
}
HALF_BATCH = ["vae.batch_size=2", "unet.batch_size=1"]  # per worker, for 2 workers
STAGES = {"vae": ("vae",), "unet": ("unet", "text_encoder")}
GRADIENT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-6
WEIGHT_TOLERANCE = 5e-2


@pytest.fixture(scope="module")
def job_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("train_ddp") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def reference(job_file):
    """One worker, batch 2B: both stages' states and the largest weight update of each."""
    out = job_file.parent / "reference"
    train_job(load_train_job(job_file, [f"out={out}"]).config, progress=False, log=lambda _: None)
    states = _states(out)
    initial = _initial(job_file, out)
    update = {}
    for stage, comps in STAGES.items():
        # every trainable parameter had a gradient (AdamW keeps state only for those), which DDP
        # without find_unused_parameters requires
        assert len(states[stage]["optimizer"]["state"]) == sum(len(list(initial[c].parameters())) for c in comps)
        update[stage] = max(
            float((states[stage]["model"][c][n] - p).abs().max())
            for c in comps
            for n, p in initial[c].state_dict().items()
        )
    return states, update


def _states(out):
    return {stage: torch.load(out / "train" / f"{stage}.pt", weights_only=True) for stage in STAGES}


def _initial(job_file, out):
    """The seeded starting modules of every trained component (as ``JobRunner.initial`` builds them)."""
    from transformers import CLIPTokenizer

    from videogen.train.architecture import new_text_encoder, new_unet, new_vae

    arch = load_train_job(job_file).config.model.architecture
    tokenizer = CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    built = {}
    for name, build in (
        ("vae", lambda: new_vae(arch)),
        ("text_encoder", lambda: new_text_encoder(arch, tokenizer)),
        ("unet", lambda: new_unet(arch)),
    ):
        torch.manual_seed(0)
        built[name] = build()
    return built


def _compare(reference, out) -> dict:
    """Per stage: (gradient, loss, weight) differences as defined in the module docstring; asserts them."""
    ref_states, update = reference
    states = _states(out)
    report = {}
    for stage, comps in STAGES.items():
        ref, new = ref_states[stage], states[stage]
        moments = [
            (new["optimizer"]["state"][i]["exp_avg"], ref["optimizer"]["state"][i]["exp_avg"])
            for i in ref["optimizer"]["state"]
        ]
        gradient = max(float((a - b).abs().max()) for a, b in moments) / max(float(b.abs().max()) for _, b in moments)
        assert len(new["losses"]) == len(ref["losses"]) == TINY[stage]["steps"]
        loss = max(abs(a - b) / abs(b) for a, b in zip(new["losses"], ref["losses"], strict=True))
        weight = max(
            float((new[kind][c][k] - v).abs().max())
            for kind in ("model", "ema")
            for c in comps
            for k, v in ref[kind][c].items()
        )
        report[stage] = {"gradient": gradient, "loss": loss, "weight": weight / update[stage]}
    print(f"{out.name}: relative differences to the 1-worker batch-2B run: {report}")
    for stage, diff in report.items():
        assert diff["gradient"] <= GRADIENT_TOLERANCE, (stage, diff)
        assert diff["loss"] <= LOSS_TOLERANCE, (stage, diff)
        assert diff["weight"] <= WEIGHT_TOLERANCE, (stage, diff)
    return report


@pytest.mark.slow
def test_two_gloo_workers_with_batch_b_equal_one_worker_with_batch_2b(job_file, reference):
    out = job_file.parent / "local"
    started = time.perf_counter()
    result = train_local(load_train_job(job_file, [f"out={out}", *HALF_BATCH]).config, 2)
    print(f"2 local workers: {time.perf_counter() - started:.1f} s")
    _compare(reference, out)
    assert result.out == out
    assert {s: r.losses for s, r in result.stages.items()} == {s: st["losses"] for s, st in _states(out).items()}
    assert [result.stages[s].samples for s in STAGES] == [8, 4]  # steps * 2 workers * B


@pytest.mark.slow
def test_videogen_train_on_two_ray_workers_matches_one_worker(job_file, reference, monkeypatch, capsys):
    import ray

    from videogen.cli import main
    from videogen.config import ModelConfig
    from videogen.models.loader import load_bundle

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = job_file.parent / "ray"
    started = time.perf_counter()
    code = main(["train", str(job_file), f"out={out}", "ray.workers=2", *HALF_BATCH, "--no-progress"])
    print(f"2 Ray Train workers through the CLI: {time.perf_counter() - started:.1f} s")
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert not ray.is_initialized(), "the local Ray instance must be shut down"
    for stage in STAGES:  # the CLI prints rank 0's TrainResult
        assert f"{stage}: {TINY[stage]['steps']} steps, last loss" in captured.out
    assert f"wrote {out}" in captured.out
    assert (out / "train" / "ray").is_dir()
    load_bundle(ModelConfig(path=str(out)))
    _compare(reference, out)


@pytest.mark.slow
def test_a_failing_ray_worker_is_one_clear_error(job_file, tmp_path, monkeypatch, capsys):
    import ray

    from videogen.cli import main

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "broken"
    (out / "train").mkdir(parents=True)
    (out / "train" / "vae.pt").write_bytes(b"not a checkpoint")
    code = main(["train", str(job_file), f"out={out}", "ray.workers=2", *HALF_BATCH, "--no-progress", "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("videogen: error:")]
    assert len(lines) == 1 and "vae.pt: cannot read the training checkpoint" in lines[0], err[-2000:]
    assert not ray.is_initialized()


def test_worker_failures_are_reported_by_their_root_cause():
    from ray.train import ControllerError, WorkerGroupError

    lost = torch.distributed.DistBackendError("[gloo] Connection closed by peer [127.0.0.1]:1234")
    user = MediaError("clip_7.mp4: cannot decode frame 3")
    error = _training_error(WorkerGroupError("...", {0: lost, 1: user}), "/out")
    assert type(error) is MediaError and str(error) == "clip_7.mp4: cannot decode frame 3"

    error = _training_error(WorkerGroupError("...", {0: lost, 1: ZeroDivisionError("division by zero\n  at x")}), "/o")
    assert type(error) is VideogenError
    assert str(error) == (
        "training worker rank 1 failed: ZeroDivisionError: division by zero; "
        "checkpoints written so far in /o/train are kept for --resume"
    )
    assert str(_training_error(WorkerGroupError("...", {0: lost}), "/o")).startswith(
        "training worker rank 0 failed: DistBackendError: [gloo] Connection closed by peer"
    )
    assert type(_training_error(WorkerGroupError("...", {1: ConfigError("x"), 0: lost}), "/o")) is ConfigError
    error = _training_error(ControllerError(RuntimeError("placement failed")), "/o")
    assert str(error) == "Ray Train's controller failed: RuntimeError: placement failed"
