"""The denoising loop: a diffusers scheduler, classifier-free guidance and per-step hooks.

For each timestep ``t`` the loop computes the guided model output
``o = o_u + s * (o_c - o_u)`` (``s`` = guidance scale; ``o`` is epsilon or v, as the model
predicts), lets the hooks adjust it, takes one scheduler step, and tells the hooks the new
latents. Latents are ``(B, C, F, H, W)``; the schedulers act elementwise, so any frame slice of
the video can be stepped on its own, which is what clip workers do.

Hooks are how the rest of the system plugs in without forking the loop: parallel modes, noise
priors, checkpoints and progress all implement :class:`StepHook`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from videogen.models.frame_context import FrameContext
from videogen.prompts import TextContext

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpmpp": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "dpmpp_sde": DPMSolverMultistepScheduler,
}
_SCHEDULER_EXTRAS: dict[str, dict[str, Any]] = {
    "dpmpp": {"algorithm_type": "dpmsolver++"},
    "dpmpp_sde": {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
}


def make_scheduler(name: str, base_config: dict[str, Any], prediction_type: str = "auto") -> SchedulerMixin:
    """A fresh scheduler of kind ``name`` on the model's noise schedule (betas, timesteps)."""
    overrides = dict(_SCHEDULER_EXTRAS.get(name, {}))
    if prediction_type != "auto":
        overrides["prediction_type"] = prediction_type
    return SCHEDULERS[name].from_config(base_config, **overrides)


@dataclass
class StepContext:
    """Where the loop is: step ``index`` of ``num_steps`` at timestep ``timestep``."""

    index: int
    num_steps: int
    timestep: torch.Tensor
    scheduler: SchedulerMixin
    frames: range


class StepHook:
    """Callbacks around one denoising step. Subclasses override what they need."""

    def on_model_output(self, ctx: StepContext, latents: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Adjust the guided model output before the scheduler step (e.g. a noise prior)."""
        return output

    def on_step_end(self, ctx: StepContext, latents: torch.Tensor) -> None:
        """See the latents after the step (checkpoints, progress, previews)."""


UnetInputs = Callable[[torch.Tensor], dict[str, Any]]
"""``context -> keyword inputs of a UNet call`` (:meth:`videogen.models.family.ModelFamily.unet_inputs`)."""

UnetCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]], torch.Tensor]
"""``(sample, timestep, context, branches) -> output``: one UNet call as the model family makes it
(:meth:`videogen.models.family.ModelFamily.unet_call`), on ``(B, C, F, h, w)`` tensors whose batch
entries are the guidance ``branches`` (``"uncond"``, ``"cond"``) in order."""


def _context_only(context: torch.Tensor) -> dict[str, Any]:
    return {"encoder_hidden_states": context}


class Denoiser:
    """Guided model output for a frame slice: ``o_u + s (o_c - o_u)``, batched as ``[uncond, cond]``.

    ``s`` is one number or a tensor that broadcasts over the latents (per frame: ``(1, 1, F, 1, 1)``);
    guidance is on when any of it exceeds 1. ``inputs(context)`` gives the UNet's keyword inputs for a
    text context (the model family's conditioning: cross-attention states, a pooled caption, fps, ...);
    ``call``, when given, replaces the whole UNet call (:data:`UnetCall`). ``before_call(t)`` callbacks run
    before every UNet call (e.g. a timestep-dependent attention schedule in a parallel mode).
    :meth:`branch` evaluates one guidance branch alone (CFG and ParaStep warm-up splitting), :meth:`guide`
    combines two.
    """

    BRANCHES = ("uncond", "cond")

    def __init__(
        self,
        unet: torch.nn.Module,
        text: TextContext,
        guidance_scale: float | torch.Tensor,
        frame_context: FrameContext | None = None,
        inputs: UnetInputs | None = None,
        call: UnetCall | None = None,
        guided: bool | None = None,
    ):
        self.unet = unet
        self._guided = guided
        self.inputs = inputs or _context_only
        self.call = call or self._call_unet
        self.dtype = next(unet.parameters()).dtype  # ModelMixin.dtype walks every parameter
        self.text = text
        self.guidance_scale = guidance_scale
        self.frame_context = frame_context
        self.before_call: list[Callable[[torch.Tensor], None]] = []
        self.evaluations = 0
        if text.per_frame and frame_context is None:
            raise ValueError("a per-frame prompt schedule needs a FrameContext installed on the UNet")

    @property
    def guided(self) -> bool:
        """Whether both branches are evaluated: as given (a clip worker passes the whole video's answer, so
        workers whose own frames' scales differ still agree), else whether any scale is above 1."""
        if self._guided is not None:
            return self._guided
        return bool((torch.as_tensor(self.guidance_scale) > 1.0).any())

    def _context(self, num_frames: int) -> torch.Tensor:
        cond, uncond = self.text.cond, self.text.uncond
        if not self.text.per_frame:
            return torch.cat([uncond, cond]) if self.guided else cond
        if cond.shape[0] != num_frames:
            raise ValueError(f"text context has {cond.shape[0]} frames, latents have {num_frames}")
        per_frame = torch.cat([uncond.expand(num_frames, -1, -1), cond]) if self.guided else cond
        self.frame_context.embeds = per_frame
        batches = 2 if self.guided else 1
        return per_frame[::num_frames][:batches]

    def _branch_context(self, branch: str, num_frames: int) -> torch.Tensor:
        """One branch's ``(1, L, D)`` text context; per-frame embeddings go to the frame context."""
        if branch not in self.BRANCHES:
            raise ValueError(f"branch must be one of {self.BRANCHES}, got {branch!r}")
        own = self.text.uncond if branch == "uncond" else self.text.cond
        if not self.text.per_frame:
            return own
        if self.text.cond.shape[0] != num_frames:
            raise ValueError(f"text context has {self.text.cond.shape[0]} frames, latents have {num_frames}")
        per_frame = own.expand(num_frames, -1, -1).contiguous() if branch == "uncond" else own
        self.frame_context.embeds = per_frame
        return per_frame[:1]

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``o_u + s (o_c - o_u)``."""
        scale = self.guidance_scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(device=uncond.device, dtype=uncond.dtype)
        return uncond + scale * (cond - uncond)

    def _call_unet(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, branches: tuple[str, ...]
    ) -> torch.Tensor:
        return self.unet(sample, timestep, **self.inputs(context)).sample

    def _unet(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, branches: tuple[str, ...]
    ) -> torch.Tensor:
        """One counted UNet call, after the ``before_call`` callbacks."""
        for callback in self.before_call:
            callback(timestep)
        output = self.call(sample.to(self.dtype), timestep, context.to(dtype=self.dtype), branches)
        self.evaluations += 1
        return output

    @torch.no_grad()
    def branch(self, latents: torch.Tensor, timestep: torch.Tensor, branch: str) -> torch.Tensor:
        """The unguided output of one guidance branch (``"uncond"`` or ``"cond"``): one UNet call, batch 1.

        :meth:`guide` of the two branches is the guided output up to rounding (a batch of one and a
        batch of two round differently, by about 1e-6).
        """
        context = self._branch_context(branch, latents.shape[2])
        return self._unet(latents, timestep, context, (branch,)).to(latents.dtype)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        model_in = torch.cat([latents, latents]) if self.guided else latents
        branches = self.BRANCHES if self.guided else ("cond",)
        output = self._unet(model_in, timestep, self._context(latents.shape[2]), branches).to(latents.dtype)
        if not self.guided:
            return output
        uncond, cond = output.chunk(2)
        return self.guide(uncond, cond)


StepNoise = Callable[[int, torch.Tensor], torch.Tensor]
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(latents, timestep) -> guided output``: a :class:`Denoiser` or a parallel wrapper of one."""


def draws_step_noise(scheduler: SchedulerMixin) -> bool:
    """Whether ``scheduler.step`` adds fresh noise at every step whatever ``eta`` is (SDE-DPM-Solver++)."""
    return str(getattr(scheduler.config, "algorithm_type", "")).startswith("sde")


def step_kwargs(scheduler: SchedulerMixin, eta: float) -> dict[str, Any]:
    """The keyword arguments ``scheduler.step`` takes besides the model output (DDIM: ``eta``)."""
    params = inspect.signature(scheduler.step).parameters
    return {"eta": eta} if "eta" in params else {}


class Stepper:
    """One denoising step as every loop takes it (:func:`run_steps`, ParaStep's rounds and drafts).

    :meth:`evaluate` is the guided model output at step ``index``; :meth:`step` lets every hook shape
    it (``on_model_output``) and takes the scheduler step ``Phi(latents, output, index)``, with the
    step's own noise when the step is stochastic (DDIM with ``eta > 0``, or a scheduler that
    :func:`draws_step_noise`); :meth:`master` then shows the new latents to every hook
    (``on_step_end``). ``step_noise(index, latents)`` is that noise, drawn per step and global frame
    so that the video does not depend on how it is split; a stochastic step without it is refused
    rather than left to the scheduler's own unseeded draw.
    """

    def __init__(
        self,
        scheduler: SchedulerMixin,
        frames: range,
        hooks: Sequence[StepHook],
        eta: float,
        step_noise: StepNoise | None,
    ):
        if eta > 0 and step_noise is None:
            raise ValueError("eta > 0 needs step_noise: the step noise drawn per step index and global frame")
        stochastic = draws_step_noise(scheduler)
        if stochastic and step_noise is None:
            raise ValueError(
                f"{type(scheduler).__name__} ({scheduler.config.algorithm_type}) adds noise at every step and "
                "needs step_noise: the step noise drawn per step index and global frame"
            )
        self.timesteps = scheduler.timesteps
        self.frames = frames
        self.hooks = hooks
        self.kwargs = step_kwargs(scheduler, eta)
        self.step_noise = step_noise if eta > 0 or stochastic else None

    def evaluate(self, denoiser: Denoise, scheduler: SchedulerMixin, index: int, latents: torch.Tensor) -> torch.Tensor:
        t = self.timesteps[index]
        return denoiser(scheduler.scale_model_input(latents, t), t)

    def step(
        self, scheduler: SchedulerMixin, index: int, latents: torch.Tensor, output: torch.Tensor
    ) -> tuple[StepContext, torch.Tensor]:
        """``Phi(latents, output, index)`` on ``scheduler`` (the master's or a draft copy)."""
        t = self.timesteps[index]
        ctx = StepContext(index, len(self.timesteps), t, scheduler, self.frames)
        for hook in self.hooks:
            output = hook.on_model_output(ctx, latents, output)
        extra = dict(self.kwargs)
        if self.step_noise is not None:
            extra["variance_noise"] = self.step_noise(index, latents)
        return ctx, scheduler.step(output, t, latents, **extra).prev_sample

    def master(
        self, scheduler: SchedulerMixin, index: int, latents: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor:
        """A step of the trajectory that is kept: :meth:`step`, then every hook's ``on_step_end``."""
        ctx, latents = self.step(scheduler, index, latents, output)
        for hook in self.hooks:
            hook.on_step_end(ctx, latents)
        return latents


def run_steps(
    denoiser: Denoise,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    frames: range,
    hooks: Sequence[StepHook] = (),
    start_index: int = 0,
    eta: float = 0.0,
    step_noise: StepNoise | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` from step ``start_index`` to the end of ``scheduler.timesteps``.

    The caller has already called ``scheduler.set_timesteps`` (and restored its state when
    resuming). Each step is :class:`Stepper`'s, as in every other loop.
    """
    stepper = Stepper(scheduler, frames, hooks, eta, step_noise)
    for index in range(start_index, len(scheduler.timesteps)):
        output = stepper.evaluate(denoiser, scheduler, index, latents)
        latents = stepper.master(scheduler, index, latents, output)
    return latents


def scheduler_state(scheduler: SchedulerMixin) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The scheduler's mutable state, as (tensors, JSON-able values), for checkpoints.

    Multistep solvers keep a history (``model_outputs``, ``last_sample``, orders, step index);
    resuming without it would change the video, so everything in ``vars(scheduler)`` but the
    frozen config is saved. Lists become ``name.i`` entries; ``None`` items are recorded.
    """
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for name, value in vars(scheduler).items():
        if name == "_internal_dict":
            continue
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu().clone()
        elif isinstance(value, list):
            values[name] = {"list": len(value)}
            for i, item in enumerate(value):
                if isinstance(item, torch.Tensor):
                    tensors[f"{name}.{i}"] = item.detach().cpu().clone()
                else:
                    values[f"{name}.{i}"] = item
        else:
            values[name] = value
    return tensors, values


def restore_scheduler_state(
    scheduler: SchedulerMixin, tensors: dict[str, torch.Tensor], values: dict[str, Any], device: torch.device
) -> None:
    """Inverse of :func:`scheduler_state` (tensors go back to ``device``)."""
    for name, value in values.items():
        if "." in name and name.rsplit(".", 1)[0] in values:
            continue
        if isinstance(value, dict) and "list" in value:
            items = []
            for i in range(value["list"]):
                key = f"{name}.{i}"
                items.append(tensors[key].to(device) if key in tensors else values.get(key))
            setattr(scheduler, name, items)
        else:
            setattr(scheduler, name, value)
    for name, tensor in tensors.items():
        if "." not in name:
            setattr(scheduler, name, tensor.to(device))


class ProgressHook(StepHook):
    """A tqdm bar over the steps with rate and ETA (rank 0 only in parallel renders)."""

    def __init__(self, total: int, start: int = 0, desc: str = "denoise", enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)

    def on_step_end(self, ctx: StepContext, latents: torch.Tensor) -> None:
        self.bar.update(1)
        if ctx.index + 1 == ctx.num_steps:
            self.bar.close()
