"""CFG parallelism: the two classifier-free-guidance branches on the two workers of the ``cfg`` axis.

The single-process :class:`videogen.sampling.Denoiser` evaluates the UNet once per step on the
batch ``[uncond, cond]`` and returns ``o = o_u + s (o_c - o_u)``. With CFG parallelism (the
"split batch" of DistriFusion, arXiv 2402.19481), cfg-rank 0 evaluates the
unconditional branch and cfg-rank 1 the conditional one, each with batch 1; one all-gather of
the branch outputs per step (``kind="output"``) gives both ranks ``(o_u, o_c)``, and both return
the same ``o``. Each branch's text context (and, for per-frame prompt schedules, its per-frame
embeddings) is the slice of the batch the single-process denoiser would have built, so the
result equals the single-process guided output.
"""

from __future__ import annotations

import torch

from parallel.comm import AxisComm
from videogen.errors import ConfigError
from videogen.sampling import Denoiser

__all__ = ["CfgParallelDenoiser"]


class CfgParallelDenoiser:
    """A :class:`Denoiser` with the ``(latents, timestep) -> guided output`` call, one branch per cfg rank.

    Wraps ``denoiser`` (its UNet, text, guidance scale, frame context, ``before_call`` callbacks
    and evaluation count are used as they are); ``comm`` is the two-worker ``cfg`` axis.
    """

    def __init__(self, denoiser: Denoiser, comm: AxisComm):
        if not denoiser.guided:
            raise ConfigError(
                f"CFG parallelism needs classifier-free guidance (guidance_scale > 1, got {denoiser.guidance_scale})"
            )
        if comm.size != 2:
            raise ConfigError(f"CFG parallelism splits two guidance branches over 2 workers, not {comm.size}")
        self.denoiser = denoiser
        self.comm = comm

    @property
    def branch(self) -> str:
        return Denoiser.BRANCHES[self.comm.rank]

    @property
    def evaluations(self) -> int:
        return self.denoiser.evaluations

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        output = self.denoiser.branch(latents, timestep, self.branch)
        uncond, cond = self.comm.all_gather(output, "output")
        return self.denoiser.guide(uncond, cond)
