"""Step parallelism: ParaStep's reuse-then-predict on the ``step`` mesh axis, and its oracle.

ParaStep (Wang, Li, Yu, Guo, Zhao, "Communication-Efficient Diffusion Denoising Parallelization
via Reuse-then-Predict Mechanism", arXiv 2505.14741). Let ``x_i`` be the latents before step ``i``
of ``T``, ``f(x, t)`` the guided model output (epsilon or v) and ``Phi(x, o, i)`` one scheduler step
at ``t_i`` (output hooks included). The sequential sampler is ``x_{i+1} = Phi(x_i, f(x_i, t_i), i)``.
With ``N`` step-ranks and ``W`` warm-up steps:

- **warm-up** (steps ``start .. start+W-1``): every rank takes the sequential step itself. With
  classifier-free guidance and ``warmup_split`` (default), step-ranks 0 and 1 evaluate one guidance
  branch each (batch 1) and share them by one ``all_gather`` (kind ``"warmup_branch"``), so a
  warm-up step costs each rank about half a guided evaluation instead of a whole one; the released
  code has every rank repeat the whole evaluation. The ideal loop speedup over the sequential
  sampler rises from ``T / (W + ceil((T - W) / N))`` to about ``T / (W / 2 + ceil((T - W) / N))``.
  Batch-1 and batch-2 UNet calls round differently, so a split warm-up step equals the sequential
  one to about 1e-6, not bit for bit (``warmup_split=False`` gives bit-for-bit warm-up steps);
- **rounds** of ``N`` consecutive steps ``s .. s+N-1`` (the last round may be shorter). Rank ``k``
  *drafts* ``x~_{s+k}`` by ``k`` scheduler steps from ``x_s`` that *reuse* a cached output ``c_k``
  instead of calling the model, then *predicts* once: ``o_{s+k} = f(x~_{s+k}, t_{s+k})``. The
  master trajectory is ``x_{s+r+1} = Phi(x_{s+r}, o_{s+r}, s+r)`` for ``r = 0 .. N-1``: each output
  is evaluated at a draft and applied to the true latents. That is the only approximation; the
  warm-up, position 0 of every round and ``N = 1`` are exact (up to the rounding above).

Reuse rules (``c_k``): ``"shared"`` (default) reuses the newest output, ``o_{s-1}``, on every rank;
``"own"`` reuses the newest output this rank evaluated itself, ``o_{s-N+k}`` (in the first round,
the last warm-up output), as the released code does. They coincide for ``N = 2``.

Communication, per round: one ``all_gather`` of the ``N`` predicted outputs on the step axis
(kind ``"model_output"``), after which *every* rank applies the same master steps to the same
tensors in the same order. So every rank holds the master latents and the master scheduler state
(multistep history included) at every step, byte for byte, and ends with the final latents. The
released code instead sends each output to rank 0, which alone keeps the trajectory and broadcasts
the latent after each full round: the other ranks never see the steps inside a round, nor the
final latents after a partial last round. For ``N = 2`` both schemes move one latent-sized tensor
per round into each rank; for larger ``N`` the gather brings ``N - 1`` into every rank, where the
released scheme brings ``N - 1`` into rank 0 and one into the others. One small ``all_gather`` at
the start of a render checks that every rank runs the same schedule (kind ``"setup"``). Nothing
else crosses workers; during the warm-up only the split guidance branches are sent.

Drafts run on a copy of the master scheduler taken at ``s``, so stateful schedulers (Euler's step
index, DPM-Solver++/UniPC history) draft from the master's state and the master's own state never
sees a draft. Samplers whose step draws random numbers from a generator (ancestral) are refused:
ranks take different numbers of draft steps, so their generators would diverge. Stochastic steps
(DDIM with ``eta > 0``, SDE-DPM-Solver++) are supported through ``step_noise``, which is drawn per
step index and global frame, not from a generator: a draft's step ``i`` adds the same noise ``n_i``
as the master's step ``i``, so a draft differs from the master trajectory by its reused outputs only,
as with a deterministic sampler, and the exact cases above stay exact.

:class:`SerialReferenceLoop` is the single-process oracle: the same mathematics with ``N``
virtual ranks, computed step by step.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from parallel.comm import AxisComm
from videogen.config import ModelConfig
from videogen.errors import ConfigError
from videogen.models.loader import model_family
from videogen.sampling import (
    SCHEDULERS,
    Denoise,
    Denoiser,
    StepHook,
    StepNoise,
    Stepper,
    draws_step_noise,
)

__all__ = [
    "REUSE_RULES",
    "STEP_SAMPLERS",
    "SerialReferenceLoop",
    "StepParallelConfig",
    "StepParallelLoop",
    "StepSchedule",
    "check_sampler",
    "make_step_loop",
    "step_schedule",
]

REUSE_RULES = ("shared", "own")
STEP_SAMPLERS = ("ddim", "euler", "dpmpp", "unipc", "dpmpp_sde")  # a step is fixed by output, t, latents, step noise


@dataclass(frozen=True)
class StepParallelConfig:
    """ParaStep settings.

    ``warmup``: steps every rank computes exactly before the rounds start (at least 1; counted
    from the first step of the render, or of the resumed part). ``reuse``: ``"shared"`` (the
    newest output, default) or ``"own"`` (each rank's own newest output, the released code's rule).
    ``warmup_split``: split the two guidance branches of each warm-up step over step-ranks 0 and 1
    (used when guidance is on and the loop gets a plain :class:`~videogen.sampling.Denoiser`).
    """

    warmup: int = 3
    reuse: str = "shared"
    warmup_split: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise ConfigError(f"parallel.step_warmup must be an integer >= 1, got {self.warmup!r}")
        if self.reuse not in REUSE_RULES:
            raise ConfigError(f"parallel.step_reuse must be one of {REUSE_RULES}, got {self.reuse!r}")
        if not isinstance(self.warmup_split, bool):
            raise ConfigError(f"parallel.step_warmup_split must be true or false, got {self.warmup_split!r}")

    def splits_warmup(self, denoiser: object, size: int) -> bool:
        """Whether ``size`` step-ranks split the guidance branches of ``denoiser``'s warm-up steps."""
        return self.warmup_split and size > 1 and isinstance(denoiser, Denoiser) and denoiser.guided


def check_sampler(name: str, model: ModelConfig | None = None) -> None:
    """Raise :class:`ConfigError` unless step parallelism supports sampler ``name``.

    ``auto`` is the default sampler of ``model``'s family, found from its config files (no weights).
    """
    if name == "auto":
        if model is None:
            raise ValueError("sampler.name auto names the model family's sampler: pass the model")
        name = model_family(model).default_sampler
    if name not in STEP_SAMPLERS:
        raise ConfigError(
            f"parallel.step > 1 cannot use sampler.name {name!r}: supported are {', '.join(STEP_SAMPLERS)} "
            "(a sampler that draws noise inside its step would diverge across step workers)"
        )


def _check_scheduler(scheduler: SchedulerMixin, step_noise: StepNoise | None) -> None:
    supported = tuple(SCHEDULERS[name] for name in STEP_SAMPLERS)
    unseeded = draws_step_noise(scheduler) and step_noise is None
    if type(scheduler) not in supported or unseeded:
        fix = "pass step_noise, drawn per step index" if unseeded else f"use one of {', '.join(STEP_SAMPLERS)}"
        raise ConfigError(
            f"step parallelism cannot use the scheduler {type(scheduler).__name__} this way: it draws noise inside "
            f"its step, which would diverge across step workers; {fix}"
        )


@dataclass(frozen=True)
class StepSchedule:
    """Which steps are warm-up and how the rest split into rounds.

    Position ``r`` of a round (its ``r``-th step) is evaluated by step-rank ``r``; a warm-up step by
    every rank (or, split, one guidance branch each by ranks 0 and 1). Rank ``k`` therefore
    evaluates ``len(warmup) + #{rounds longer than k}`` times (``len(warmup)`` is 0 for ranks
    ``k >= 2`` of a split warm-up).
    """

    warmup: range
    rounds: tuple[range, ...]

    def evaluations(self, size: int, split_warmup: bool = False) -> list[int]:
        """UNet calls of each of ``size`` ranks; with ``split_warmup`` ranks 0 and 1 make the
        warm-up's (batch-1) calls and the others none."""
        warmup = [len(self.warmup) if k < 2 or not split_warmup else 0 for k in range(size)]
        return [warmup[k] + sum(len(r) > k for r in self.rounds) for k in range(size)]


def step_schedule(start: int, num_steps: int, warmup: int, size: int) -> StepSchedule:
    """Warm-up ``start .. start+warmup-1``, then rounds of ``size`` steps up to ``num_steps``."""
    end = min(num_steps, start + warmup)
    rounds = tuple(range(s, min(s + size, num_steps)) for s in range(end, num_steps, size))
    return StepSchedule(range(start, end), rounds)


class _Stepper(Stepper):
    """:class:`videogen.sampling.Stepper` plus what ParaStep adds: single guidance branches and drafts."""

    def evaluate_branch(
        self, denoiser: Denoiser, scheduler: SchedulerMixin, index: int, latents: torch.Tensor, branch: str
    ) -> torch.Tensor:
        """One guidance branch of :meth:`evaluate` (unguided, batch 1)."""
        t = self.timesteps[index]
        return denoiser.branch(scheduler.scale_model_input(latents, t), t, branch)

    def draft_and_predict(
        self,
        denoiser: Denoise,
        scheduler: SchedulerMixin,
        latents: torch.Tensor,
        steps: range,
        position: int,
        reuse: torch.Tensor,
    ) -> torch.Tensor:
        """``f(x~_{s+k}, t_{s+k})``: ``k = position`` reuse steps from ``x_s`` on a scheduler copy."""
        if position == 0:
            return self.evaluate(denoiser, scheduler, steps[0], latents)
        draft = copy.deepcopy(scheduler)
        for index in steps[:position]:
            _, latents = self.step(draft, index, latents, reuse)
        return self.evaluate(denoiser, draft, steps[position], latents)


def _fingerprint(scheduler: SchedulerMixin, config: StepParallelConfig) -> int:
    text = f"{type(scheduler).__name__}|{config}|{scheduler.timesteps.tolist()}"
    return zlib.crc32(text.encode())


class StepParallelLoop:
    """The ParaStep denoising loop of one step-rank; a drop-in for :func:`videogen.sampling.run_steps`.

    Hooks: ``on_step_end`` is called once per step, in step order, with the master latents and the
    master scheduler, on every rank (a round's steps are applied after its exchange, so they come
    in bursts of ``N``). ``on_model_output`` is called for every scheduler step a rank takes,
    drafts included (with the draft's latents and scheduler copy): a draft step is the master step
    with a reused output, so output-shaping hooks (the image prior) shape it the same way. Hooks
    must be deterministic for the ranks to stay equal. Resuming (``start_index > 0``) starts with a
    fresh warm-up. No state survives a call.
    """

    def __init__(self, comm: AxisComm, config: StepParallelConfig):
        self.comm = comm
        self.config = config

    def __call__(
        self,
        denoiser: Denoise,
        scheduler: SchedulerMixin,
        latents: torch.Tensor,
        frames: range,
        hooks: Sequence[StepHook] = (),
        start_index: int = 0,
        eta: float = 0.0,
        step_noise: StepNoise | None = None,
    ) -> torch.Tensor:
        _check_scheduler(scheduler, step_noise)
        stepper = _Stepper(scheduler, frames, hooks, eta, step_noise)
        num_steps = len(scheduler.timesteps)
        self._agree(scheduler, latents, start_index, num_steps)
        schedule = step_schedule(start_index, num_steps, self.config.warmup, self.comm.size)
        own = newest = None
        split = self.config.splits_warmup(denoiser, self.comm.size)
        for index in schedule.warmup:
            if split:
                own = newest = self._split_warmup(stepper, denoiser, scheduler, index, latents)
            else:
                own = newest = stepper.evaluate(denoiser, scheduler, index, latents)
            latents = stepper.master(scheduler, index, latents, newest)
        for steps in schedule.rounds:
            reuse = newest if self.config.reuse == "shared" else own
            mine = None
            if self.comm.rank < len(steps):
                mine = stepper.draft_and_predict(denoiser, scheduler, latents, steps, self.comm.rank, reuse)
                own = mine
            outputs = self._gather(mine, len(steps), latents, "model_output")  # in position order
            for index, output in zip(steps, outputs, strict=True):
                latents = stepper.master(scheduler, index, latents, output)
            newest = outputs[-1]
        return latents

    def _agree(self, scheduler: SchedulerMixin, latents: torch.Tensor, start: int, num_steps: int) -> None:
        """Check on every rank alike that all ranks will run the same rounds on same-shaped latents."""
        mine = torch.tensor(
            [start, num_steps, latents.numel(), _fingerprint(scheduler, self.config)], device=self.comm.device
        )
        rows = [r.tolist() for r in self.comm.all_gather(mine, "setup")]
        if any(row != rows[0] for row in rows):
            raise ConfigError(
                f"step workers disagree on [start step, steps, latent size, scheduler/config fingerprint]: {rows}"
            )

    def _split_warmup(
        self, stepper: _Stepper, denoiser: Denoiser, scheduler: SchedulerMixin, index: int, latents: torch.Tensor
    ) -> torch.Tensor:
        """The guided output of warm-up step ``index``: rank ``b < 2`` evaluates branch ``b``, all gather both."""
        rank, mine = self.comm.rank, None
        if rank < 2:
            mine = stepper.evaluate_branch(denoiser, scheduler, index, latents, Denoiser.BRANCHES[rank])
        uncond, cond = self._gather(mine, 2, latents, "warmup_branch")
        return denoiser.guide(uncond, cond)

    def _gather(self, mine: torch.Tensor | None, length: int, like: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """The tensors of ranks ``0 .. length-1`` (each shaped like ``like``), in rank order; the
        ranks past ``length`` send none."""
        sizes = [1 if k < length else 0 for k in range(self.comm.size)]
        part = like.new_empty((0, *like.shape)) if mine is None else mine.to(like.dtype).unsqueeze(0)
        gathered = self.comm.all_gather_uneven(part.to(self.comm.device), 0, sizes, kind)
        return list(gathered.to(like.device).unbind(0))


def make_step_loop(comm: AxisComm, config: StepParallelConfig) -> StepParallelLoop:
    """The denoising loop for this worker's step-rank, for :attr:`videogen.pipeline.WorkerSlot.loop`."""
    return StepParallelLoop(comm, config)


class SerialReferenceLoop:
    """The oracle: ParaStep with ``size`` virtual step-ranks in one process, step by step.

    For each post-warm-up step ``i = s + r`` (round start ``s``, position ``r``) it drafts ``r``
    reuse steps from ``x_s`` on a copy of the scheduler as it was at ``s``, evaluates the model once
    there and takes the master step; the distributed loop must give the same latents.
    """

    def __init__(self, size: int, config: StepParallelConfig):
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self.config = config

    def __call__(
        self,
        denoiser: Denoise,
        scheduler: SchedulerMixin,
        latents: torch.Tensor,
        frames: range,
        hooks: Sequence[StepHook] = (),
        start_index: int = 0,
        eta: float = 0.0,
        step_noise: StepNoise | None = None,
    ) -> torch.Tensor:
        _check_scheduler(scheduler, step_noise)
        stepper = _Stepper(scheduler, frames, hooks, eta, step_noise)
        schedule = step_schedule(start_index, len(scheduler.timesteps), self.config.warmup, self.size)
        own: list[torch.Tensor] = []
        newest = None
        split = self.config.splits_warmup(denoiser, self.size)
        for index in schedule.warmup:
            if split:
                branches = [stepper.evaluate_branch(denoiser, scheduler, index, latents, b) for b in Denoiser.BRANCHES]
                newest = denoiser.guide(*branches)
            else:
                newest = stepper.evaluate(denoiser, scheduler, index, latents)
            own = [newest] * self.size
            latents = stepper.master(scheduler, index, latents, newest)
        for steps in schedule.rounds:
            start_latents, start_scheduler = latents, copy.deepcopy(scheduler)
            shared = newest
            for position, index in enumerate(steps):
                reuse = shared if self.config.reuse == "shared" else own[position]
                draft, x = copy.deepcopy(start_scheduler), start_latents
                for earlier in steps[:position]:
                    _, x = stepper.step(draft, earlier, x, reuse)
                newest = own[position] = stepper.evaluate(denoiser, draft, index, x)
                latents = stepper.master(scheduler, index, latents, newest)
        return latents
