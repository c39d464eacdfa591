"""Latent checkpoints during sampling, and resuming from them.

Every ``K`` steps a worker writes its frames' latents and the scheduler's state (multistep
history included) to ``<dir>/step{i}.frames{a}-{b}.safetensors``, atomically, then deletes its
older checkpoint. The job fingerprint (a hash of everything that shapes the latents) is stored
with it: resuming a different job is refused instead of producing a silently wrong video.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from videogen.config import JobConfig, layout_folder
from videogen.errors import VideogenError
from videogen.sampling import StepContext, StepHook, scheduler_state

_NAME = re.compile(r"^step(\d{5})\.frames(\d+)-(\d+)\.safetensors$")


def job_fingerprint(job: JobConfig) -> str:
    """Hash of the sections that determine the latents (not output or parallel layout).

    The first-frame image's bytes count too: a changed image at the same path is another job; so does the
    layout prior folder ``layout.prior`` resolves to (``auto`` finds it in the model folder).
    """
    container = OmegaConf.to_container(OmegaConf.structured(job), resolve=True)
    shaping = {k: container[k] for k in ("model", "prompts", "video", "sampler", "noise", "image", "layout", "svd")}
    folder = layout_folder(job)
    shaping["layout_folder"] = str(folder) if folder is not None else None
    if job.image.path is not None and Path(job.image.path).is_file():
        shaping["image_sha256"] = hashlib.sha256(Path(job.image.path).read_bytes()).hexdigest()
    shaping["sampler"] = {k: v for k, v in shaping["sampler"].items() if k != "checkpoint_every"}
    shaping["model"] = {k: v for k, v in shaping["model"].items() if k not in ("device",)}
    shaping["svd"] = {k: v for k, v in shaping["svd"].items() if k != "decode_halo"}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_dir(job: JobConfig) -> Path:
    return Path(job.output.checkpoint_dir or f"{job.output.path}.ckpt")


def _file_name(step: int, frames: range) -> str:
    return f"step{step:05d}.frames{frames.start}-{frames.stop}.safetensors"


@dataclass
class Checkpoint:
    step: int
    latents: torch.Tensor
    scheduler_tensors: dict[str, torch.Tensor]
    scheduler_values: dict[str, Any]


KEEP = 2  # newest checkpoints kept per worker: ranks may be one checkpoint apart when one dies


class CheckpointHook(StepHook):
    """Saves this worker's latents every ``every`` steps (never after the last step).

    The two newest checkpoints are kept, so workers that stopped one checkpoint apart (one died
    while the others were saving) still share a step to resume from.
    """

    def __init__(self, directory: Path, every: int, frames: range, fingerprint: str):
        self.directory, self.every, self.frames, self.fingerprint = Path(directory), every, frames, fingerprint

    def on_step_end(self, ctx: StepContext, latents: torch.Tensor) -> None:
        done = ctx.index + 1
        if done % self.every or done == ctx.num_steps:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors, values = scheduler_state(ctx.scheduler)
        payload = {f"scheduler.{k}": v for k, v in tensors.items()}
        payload["latents"] = latents.detach().cpu().contiguous()
        meta = {"fingerprint": self.fingerprint, "step": str(ctx.index), "scheduler": json.dumps(values)}
        target = self.directory / _file_name(ctx.index, self.frames)
        partial = target.with_name(f".{target.name}.partial")
        save_file(payload, str(partial), metadata=meta)
        os.replace(partial, target)
        mine = sorted(self.directory.glob(f"step*.frames{self.frames.start}-{self.frames.stop}.safetensors"))
        for old in mine[:-KEEP]:
            old.unlink(missing_ok=True)


def checkpoint_steps(directory: Path, frames: range) -> list[int]:
    """The step indices saved for exactly these frames, oldest first."""
    return sorted(
        int(m.group(1))
        for p in Path(directory).glob("step*.safetensors")
        if (m := _NAME.match(p.name)) and (int(m.group(2)), int(m.group(3))) == (frames.start, frames.stop)
    )


def resume_step(directory: Path, frames: range) -> int:
    """The newest saved step for these frames, or an error saying there is nothing to resume."""
    steps = checkpoint_steps(directory, frames)
    if not steps:
        raise VideogenError(f"--resume: no checkpoint for frames {frames.start}-{frames.stop} in {directory}")
    return steps[-1]


def load_checkpoint(directory: Path, frames: range, step: int, fingerprint: str) -> Checkpoint:
    path = Path(directory) / _file_name(step, frames)
    unreadable = "unreadable checkpoint ({}); remove it, or render without --resume"
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VideogenError(f"{path}: {unreadable.format(reason)}") from None
    if meta.get("fingerprint") != fingerprint:
        raise VideogenError(
            f"{path}: checkpoint belongs to a different job (model, prompts, video, sampler or noise "
            "changed); remove it or render without --resume"
        )
    try:
        values = json.loads(meta["scheduler"])
        latents = tensors["latents"]
    except (KeyError, ValueError):
        raise VideogenError(f"{path}: {unreadable.format('latents or scheduler state missing')}") from None
    scheduler_tensors = {k.removeprefix("scheduler."): v for k, v in tensors.items() if k.startswith("scheduler.")}
    return Checkpoint(step, latents, scheduler_tensors, values)
