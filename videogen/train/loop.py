"""The optimisation loop every training stage shares: AdamW, warm-up + cosine learning rate, gradient
clipping, an exponential moving average of the weights, checkpoints and exact resumption.

The loop knows nothing of distribution: a :class:`Workers` object says which rank this is, wraps the
modules for data parallelism and averages the logged loss. ``parallel.train_ddp`` supplies the DDP
one; :class:`SingleWorker` is the in-process one.

Resumption is exact: a step's samples and their randomness are functions of the global sample index
(:mod:`videogen.train.batches`), and the checkpoint holds the weights, the EMA weights, the optimiser
state and the loss history, so ``--resume`` continues with the very update the interrupted run would
have made next.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from videogen.errors import ConfigError
from videogen.io.atomic import partial_path
from videogen.noise.gaussian import frame_seed
from videogen.train.batches import step_indices
from videogen.train.config import StageSection
from videogen.train.plot import write_loss_curve


class Workers(Protocol):
    rank: int
    world_size: int

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module: ...

    def average(self, value: float) -> float: ...

    def barrier(self) -> None: ...


@dataclass
class SingleWorker:
    """Training in this process: rank 0 of 1."""

    rank: int = 0
    world_size: int = 1

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def average(self, value: float) -> float:
        return value

    def barrier(self) -> None:
        pass


@dataclass
class StageRun:
    """What the loop trains: the ``modules`` whose weights it optimises (and averages), the
    ``objective`` (a module holding them whose ``forward(indices)`` is the mean loss of those global
    samples; the workers wrap it for data parallelism), and how the EMA weights are written out."""

    name: str
    modules: dict[str, torch.nn.Module]
    objective: torch.nn.Module
    save: Callable[[dict[str, torch.nn.Module]], None]


@dataclass
class StageResult:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    start_step: int = 0


def learning_rate(step: int, section: StageSection) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to a tenth of ``lr`` at the last step."""
    if section.warmup_steps and step < section.warmup_steps:
        return section.lr * (step + 1) / section.warmup_steps
    span = max(section.steps - section.warmup_steps, 1)
    progress = min((step - section.warmup_steps) / span, 1.0)
    return section.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def ema_decay(step: int, decay: float) -> float:
    """``min(decay, (1 + step) / (10 + step))``: the average forgets its random start quickly."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: dict[str, torch.nn.Module], live: dict[str, torch.nn.Module], decay: float) -> None:
    for name, module in live.items():
        for e, p in zip(ema[name].parameters(), module.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)


def _clone(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    return {name: copy.deepcopy(m).requires_grad_(False).eval() for name, m in modules.items()}


def state_path(out: Path, stage: str) -> Path:
    return out / "train" / f"{stage}.pt"


def _save_state(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    torch.save(payload, partial)
    os.replace(partial, path)


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is the same user-facing problem
        raise ConfigError(f"{path}: cannot read the training checkpoint ({type(error).__name__}); delete it") from None


def run_stage(
    run: StageRun,
    section: StageSection,
    out: Path,
    workers: Workers,
    *,
    resume: bool,
    seed: int = 0,
    log_every: int = 25,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> StageResult:
    """Train ``run`` for ``section.steps`` optimiser steps, checkpointing every ``checkpoint_every``.

    The global torch generator (what dropout draws from) is reseeded from ``(seed, step, rank)`` before
    every step, so a resumed run draws what the uninterrupted one drew.
    """
    main = workers.rank == 0
    params = [p for m in run.modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=section.lr, weight_decay=section.weight_decay)
    ema = _clone(run.modules)
    result = StageResult()
    path = state_path(out, run.name)
    if path.is_file():
        if not resume:
            raise ConfigError(f"{path} exists: pass --resume to continue that run, or choose another out folder")
        state = load_state(path)
        for name, module in run.modules.items():
            module.load_state_dict(state["model"][name])
            ema[name].load_state_dict(state["ema"][name])
        optimizer.load_state_dict(state["optimizer"])
        result.losses = list(state["losses"])
        result.start_step = int(state["step"])
        if result.start_step >= section.steps:
            if main:
                log(f"{run.name}: already trained ({result.start_step} steps)")
            return result

    def checkpoint(step: int) -> None:
        if not main:
            return
        _save_state(
            path,
            {
                "step": step,
                "model": {n: m.state_dict() for n, m in run.modules.items()},
                "ema": {n: m.state_dict() for n, m in ema.items()},
                "optimizer": optimizer.state_dict(),
                "losses": result.losses,
            },
        )
        run.save(ema)
        write_loss_curve(out / "train" / f"loss_{run.name}.png", result.losses, title=f"{run.name} loss")

    for module in run.modules.values():
        module.train()
    objective = workers.wrap(run.objective)
    bar = tqdm(
        total=section.steps,
        initial=result.start_step,
        desc=run.name,
        disable=not (progress and main),
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    for step in range(result.start_step, section.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, section)
        indices = step_indices(step, workers.rank, workers.world_size, section.batch_size)
        torch.manual_seed(frame_seed(seed, workers.rank, "step", step=step))
        loss = objective(indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if section.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, section.grad_clip)
        optimizer.step()
        update_ema(ema, run.modules, ema_decay(step, section.ema_decay))
        value = workers.average(float(loss.detach()))
        result.losses.append(value)
        result.samples += section.batch_size * workers.world_size
        bar.update(1)
        recent = result.losses[-max(log_every, 1) :]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
        if not progress and main and log_every and (step + 1) % log_every == 0:
            log(f"{run.name} step {step + 1}/{section.steps} loss {sum(recent) / len(recent):.4f}")
        done = step + 1
        if section.checkpoint_every and done % section.checkpoint_every == 0 and done != section.steps:
            checkpoint(done)
    bar.close()
    result.seconds = time.perf_counter() - started
    checkpoint(section.steps)
    for module in run.modules.values():
        module.eval()
    return result
