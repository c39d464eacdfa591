"""ParaStep step parallelism: exact oracles, evaluation and traffic accounting, rank agreement.

Oracles: one step worker, or a warm-up covering every step, equals the sequential sampler bit for
bit (to ~1e-6 when the warm-up's guidance branches are split over two workers); a model whose
output ignores the latents gives the sequential result for any number of step workers (a timestep
or bookkeeping slip would show); the distributed loop equals the
single-process :class:`SerialReferenceLoop`. Multi-process cases run on gloo (3 step workers, and
2 step x 2 clip workers through the real pipeline).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

from parallel.comm import AxisComm, CommStats
from parallel.launch import run_local
from parallel.step import (
    SerialReferenceLoop,
    StepParallelConfig,
    StepSchedule,
    check_sampler,
    make_step_loop,
    step_schedule,
)
from parallel.testing import LatentDigests, latent_digest, step_latents_worker
from videogen.config import load_job
from videogen.errors import ConfigError
from videogen.models.loader import load_bundle
from videogen.models.tiny import tiny_scheduler, tiny_unet
from videogen.noise.gaussian import video_noise
from videogen.pipeline import WorkerSlot, denoise
from videogen.prompts import TextContext
from videogen.sampling import SCHEDULERS, Denoiser, StepHook, make_scheduler, run_steps

SAMPLERS = ("ddim", "euler", "dpmpp", "unipc")
SHAPE = (1, 4, 4, 8, 8)


class TimeOnlyUNet(torch.nn.Module):
    """A UNet stand-in whose output depends on the timestep and the text, never on the latents."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, sample, timestep, encoder_hidden_states):
        t = torch.as_tensor(timestep, dtype=sample.dtype)
        pattern = torch.arange(sample[0].numel(), dtype=sample.dtype).view(sample.shape[1:]) * 0.37
        text = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        return SimpleNamespace(sample=torch.sin(t / 97 + pattern + text) * self.scale)


class Recorder:
    """Records the timestep of every UNet call of a denoiser (whole or one guidance branch)."""

    def __init__(self, denoiser: Denoiser):
        self.timesteps: list[float] = []
        denoiser.before_call.append(lambda t: self.timesteps.append(float(t)))


@dataclass(frozen=True)
class Case:
    model: str  # "unet" or "time_only"
    sampler: str = "ddim"
    steps: int = 9
    warmup: int = 2
    reuse: str = "shared"
    guidance: float = 7.5
    start: int = 0
    eta: float = 0.0
    split: bool = True

    @property
    def config(self) -> StepParallelConfig:
        return StepParallelConfig(warmup=self.warmup, reuse=self.reuse, warmup_split=self.split)

    @property
    def splits(self) -> bool:
        """Whether the warm-up's guidance branches are split over step-ranks 0 and 1."""
        return self.split and self.guidance > 1


def _model(kind: str) -> torch.nn.Module:
    return tiny_unet(seed=0) if kind == "unet" else TimeOnlyUNet()


def _text() -> TextContext:
    gen = torch.Generator().manual_seed(5)
    return TextContext(torch.randn(1, 16, 16, generator=gen), torch.randn(1, 16, 16, generator=gen))


def _step_noise(index: int, latents: torch.Tensor) -> torch.Tensor:
    return video_noise(7, range(SHAPE[2]), *SHAPE[1:2], *SHAPE[3:], stream="step", step=index)


def _render(case: Case, loop, model=None, hooks=(), wrap=lambda d: d) -> torch.Tensor:
    """Run ``loop`` on ``case`` (from ``case.start``, after that many plain sequential steps)."""
    scheduler = make_scheduler(case.sampler, tiny_scheduler().config)
    scheduler.set_timesteps(case.steps)
    denoiser = Denoiser(model if model is not None else _model(case.model), _text(), case.guidance)
    gen = torch.Generator().manual_seed(11)
    latents = torch.randn(SHAPE, generator=gen) * scheduler.init_noise_sigma
    for index in range(case.start):
        t = scheduler.timesteps[index]
        latents = scheduler.step(denoiser(scheduler.scale_model_input(latents, t), t), t, latents).prev_sample
    return loop(
        wrap(denoiser),
        scheduler,
        latents,
        range(SHAPE[2]),
        list(hooks),
        start_index=case.start,
        eta=case.eta,
        step_noise=_step_noise,
    )


def _sequential(case: Case) -> torch.Tensor:
    return _render(case, run_steps)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude (Euler latents reach ~30)."""
    return ((a - b).abs().max() / b.abs().max()).item()


# ---------------------------------------------------------------------------------------------
# The schedule and the configuration (no processes)
# ---------------------------------------------------------------------------------------------


def test_schedule_evaluates_each_post_warmup_step_once():
    schedule = step_schedule(0, 50, 5, 4)
    assert schedule.warmup == range(0, 5)
    assert [s for r in schedule.rounds for s in r] == list(range(5, 50))
    assert all(len(r) == 4 for r in schedule.rounds[:-1]) and len(schedule.rounds[-1]) == 1
    assert schedule.evaluations(4) == [17, 16, 16, 16]
    assert sum(schedule.evaluations(4)) == 4 * 5 + (50 - 5)


def test_schedule_edges():
    assert step_schedule(0, 6, 8, 3).rounds == ()  # warm-up covers every step
    assert step_schedule(0, 4, 2, 3).rounds == (range(2, 4),)  # fewer steps left than workers
    resumed = step_schedule(4, 10, 2, 3)
    assert resumed.warmup == range(4, 6) and resumed.rounds == (range(6, 9), range(9, 10))
    assert step_schedule(10, 10, 2, 3) == StepSchedule(range(10, 10), ())  # nothing left


def test_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="step_warmup must be an integer >= 1"):
        StepParallelConfig(warmup=0)
    with pytest.raises(ConfigError, match="step_reuse must be one of"):
        StepParallelConfig(reuse="newest")
    with pytest.raises(ConfigError, match="step_warmup_split must be true or false"):
        StepParallelConfig(warmup_split="yes")
    assert StepParallelConfig() == StepParallelConfig(warmup=3, reuse="shared", warmup_split=True)


def test_samplers_drawing_their_own_noise_are_refused():
    for name in SCHEDULERS:
        check_sampler(name)
    with pytest.raises(ConfigError, match="cannot use sampler.name 'euler_ancestral'"):
        check_sampler("euler_ancestral")
    config = tiny_scheduler().config
    loop = make_step_loop(AxisComm(None, "step"), StepParallelConfig())
    for scheduler in (
        EulerAncestralDiscreteScheduler.from_config(config),
        DPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++"),
    ):
        scheduler.set_timesteps(3)
        with pytest.raises(ConfigError, match="draws noise inside its step"):
            loop(Denoiser(TimeOnlyUNet(), _text(), 1.0), scheduler, torch.zeros(SHAPE), range(4))


@pytest.mark.parametrize("which", ["parastep", "sequential"])
def test_both_loops_refuse_eta_without_per_step_noise(which):
    loop = make_step_loop(AxisComm(None, "step"), StepParallelConfig()) if which == "parastep" else run_steps
    with pytest.raises(ValueError, match="needs step_noise"):
        _render(Case("time_only", eta=0.5), lambda *a, **k: loop(*a, **{**k, "step_noise": None}))


# ---------------------------------------------------------------------------------------------
# One step worker (no processes): the sequential sampler, bit for bit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_one_step_worker_equals_the_sequential_sampler(sampler, guidance):
    case = Case("unet", sampler, steps=6, guidance=guidance)
    loop = make_step_loop(AxisComm(None, "step"), case.config)
    assert torch.equal(_render(case, loop), _sequential(case))


def test_one_step_worker_with_eta_and_resume_equals_the_sequential_sampler():
    for case in (Case("unet", steps=6, eta=0.6), Case("unet", steps=8, start=3)):
        loop = make_step_loop(AxisComm(None, "step"), case.config)
        assert torch.equal(_render(case, loop), _sequential(case))


def test_reference_with_one_virtual_rank_or_full_warmup_is_sequential():
    case = Case("unet", "euler", steps=6)
    assert torch.equal(_render(case, SerialReferenceLoop(1, case.config)), _sequential(case))
    unsplit = StepParallelConfig(warmup=6, warmup_split=False)
    assert torch.equal(_render(case, SerialReferenceLoop(3, unsplit)), _sequential(case))


def test_split_warmup_equals_the_sequential_sampler_up_to_batch_rounding():
    case = Case("unet", "euler", steps=6, warmup=6)
    split = _render(case, SerialReferenceLoop(3, case.config))
    assert 0 < _relative_error(split, _sequential(case)) <= 1e-5


def test_reference_is_approximate_once_rounds_start():
    case = Case("unet", steps=9)
    error = (_render(case, SerialReferenceLoop(3, case.config)) - _sequential(case)).abs().max().item()
    assert 1e-4 < error < 0.5


class _Steps(StepHook):
    def __init__(self):
        self.ends: list[int] = []

    def on_step_end(self, ctx, latents):
        self.ends.append(ctx.index)


def test_hooks_see_every_master_step_once_in_order():
    case = Case("time_only", steps=9)
    hook = _Steps()
    _render(case, SerialReferenceLoop(3, case.config), hooks=[hook])
    assert hook.ends == list(range(9))


# ---------------------------------------------------------------------------------------------
# Three step workers (gloo)
# ---------------------------------------------------------------------------------------------

TIME_ONLY = [Case("time_only", s, reuse=r) for s in SAMPLERS for r in ("shared", "own")] + [
    Case("time_only", steps=4, guidance=1.0),  # fewer post-warm-up steps than workers
    Case("time_only", "euler", steps=6, warmup=1),
    Case("time_only", "dpmpp", steps=10, start=4),  # resumed: the warm-up restarts at step 4
]
FULL_WARMUP = [Case("unet", s, steps=5, warmup=5, split=False) for s in ("ddim", "euler")]
SPLIT_WARMUP = [Case("unet", "ddim", steps=5, warmup=5), Case("unet", "dpmpp", steps=7, warmup=3)]
APPROXIMATE = [
    Case("unet", "ddim", reuse="shared"),
    Case("unet", "ddim", reuse="own"),
    Case("unet", "euler", steps=8, reuse="own", guidance=1.0),
    Case("unet", "dpmpp"),
    Case("unet", "ddim", steps=7, eta=0.6),
]
ALL_CASES = TIME_ONLY + FULL_WARMUP + SPLIT_WARMUP + APPROXIMATE


def _loop_worker(rank: int, world_size: int, cases: list[Case]) -> list[dict]:
    stats = CommStats()
    comm = AxisComm(dist.group.WORLD, "step", stats)
    out = []
    for case in cases:
        loop = make_step_loop(comm, case.config)
        model = _model(case.model)
        stats.reset()
        digests = LatentDigests()
        recorders = []

        def wrap(denoiser, recorders=recorders):
            recorders.append(Recorder(denoiser))
            return denoiser

        latents = _render(case, loop, model, hooks=[digests], wrap=wrap)
        traffic = {kind: asdict(t) for kind, t in stats.by_kind("step").items()}
        again = _render(case, loop, model)
        out.append(
            {
                "latents": latents,
                "again_equal": torch.equal(latents, again),
                "digests": digests.by_step,
                "timesteps": recorders[0].timesteps,
                "traffic": traffic,
            }
        )
    return out


@pytest.fixture(scope="module")
def three() -> dict[Case, list[dict]]:
    per_rank = run_local(_loop_worker, 3, ALL_CASES, timeout_s=240)
    return {case: [r[i] for r in per_rank] for i, case in enumerate(ALL_CASES)}


def _all_ranks_equal(results: list[dict]) -> bool:
    return all(torch.equal(r["latents"], results[0]["latents"]) for r in results)


@pytest.mark.slow
@pytest.mark.parametrize("case", TIME_ONLY, ids=str)
def test_latent_independent_model_gives_the_sequential_result(three, case):
    assert _all_ranks_equal(three[case])
    assert torch.equal(three[case][0]["latents"], _sequential(case))


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL_WARMUP, ids=str)
def test_warmup_covering_every_step_equals_the_sequential_sampler(three, case):
    assert _all_ranks_equal(three[case])
    assert torch.equal(three[case][0]["latents"], _sequential(case))
    assert all(r["traffic"] == three[case][0]["traffic"] and set(r["traffic"]) == {"setup"} for r in three[case])


@pytest.mark.slow
@pytest.mark.parametrize("case", SPLIT_WARMUP, ids=str)
def test_split_warmup_shares_one_branch_from_each_of_two_workers(three, case):
    results = three[case]
    assert _all_ranks_equal(results)
    assert torch.equal(results[2]["latents"], _render(case, SerialReferenceLoop(3, case.config)))
    if case.warmup >= case.steps:
        assert _relative_error(results[0]["latents"], _sequential(case)) <= 1e-5
    latent_bytes = torch.zeros(SHAPE).numel() * 4
    for result in results:  # one gather per warm-up step; rank 2's contribution is the uneven gather's padding
        gathered = result["traffic"]["warmup_branch"]
        assert gathered["calls"] == case.warmup
        assert gathered["bytes_sent"] == latent_bytes * case.warmup
        assert gathered["bytes_received"] == 2 * latent_bytes * case.warmup


@pytest.mark.slow
@pytest.mark.parametrize("case", APPROXIMATE, ids=str)
def test_three_workers_equal_the_serial_reference_and_each_other_at_every_step(three, case):
    results = three[case]
    assert all(r["digests"] == results[0]["digests"] for r in results)
    assert sorted(results[0]["digests"]) == list(range(case.steps))
    assert all(r["again_equal"] for r in results)  # nothing carried over from the first render
    reference = _render(case, SerialReferenceLoop(3, case.config))
    assert latent_digest(reference) == results[0]["digests"][case.steps - 1]
    assert torch.equal(results[2]["latents"], reference)
    assert not torch.equal(reference, _sequential(case))


@pytest.mark.slow
@pytest.mark.parametrize("case", [ALL_CASES[0], *TIME_ONLY[-3:], FULL_WARMUP[0], APPROXIMATE[0]], ids=str)
def test_each_post_warmup_step_is_evaluated_once_by_its_rank(three, case):
    scheduler = make_scheduler(case.sampler, tiny_scheduler().config)
    scheduler.set_timesteps(case.steps)
    timesteps = [float(t) for t in scheduler.timesteps]
    schedule = step_schedule(case.start, case.steps, case.warmup, 3)
    seen = [[timesteps.index(t) for t in r["timesteps"]] for r in three[case]]
    for rank, indices in enumerate(seen):
        warmup = [] if case.splits and rank >= 2 else list(schedule.warmup)  # rank 2 has no branch to compute
        assert indices == [*warmup, *(r[rank] for r in schedule.rounds if len(r) > rank)]


@pytest.mark.slow
def test_traffic_is_one_gather_per_round_of_latent_sized_outputs(three):
    case = APPROXIMATE[0]
    schedule = step_schedule(0, case.steps, case.warmup, 3)
    latent_bytes = torch.zeros(SHAPE).numel() * 4
    for result in three[case]:
        traffic = result["traffic"]
        assert traffic["setup"]["calls"] == 1
        assert traffic["model_output"]["calls"] == len(schedule.rounds)
        assert traffic["model_output"]["bytes_sent"] == len(schedule.rounds) * latent_bytes
        assert traffic["model_output"]["bytes_received"] == len(schedule.rounds) * 2 * latent_bytes


# ---------------------------------------------------------------------------------------------
# Step x clip (2 x 2 workers) through the real pipeline
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def composed_job(tmp_path_factory, tiny_model_dir):
    import yaml

    tmp = tmp_path_factory.mktemp("step_clip")
    job = {
        "model": {"path": str(tiny_model_dir)},
        "prompts": {"text": "a red balloon", "negative": "blurry"},
        "video": {"width": 32, "height": 32, "num_frames": 8, "fps": 8},
        "sampler": {"name": "ddim", "steps": 6, "guidance_scale": 7.5},
        "noise": {"seed": 3},
        "output": {"path": str(tmp / "out.mp4")},
        "parallel": {"launcher": "local", "clip": 2, "clip_mode": "exact"},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return load_job(path).config


def _single(job, loop=run_steps) -> torch.Tensor:
    latents, _, _ = denoise(job, load_bundle(job.model), job.noise.seed, WorkerSlot(loop=loop), progress=False)
    return latents


def _joined(parts: list[dict], step_rank: int) -> torch.Tensor:
    mine = sorted((p for p in parts if p["step_rank"] == step_rank), key=lambda p: p["clip_rank"])
    return torch.cat([p["latents"] for p in mine], dim=2)


@pytest.mark.slow
@pytest.mark.parametrize("warmup", [6, 2], ids=["full_warmup", "warmup2"])
def test_step_by_clip_workers_agree_and_match_the_single_process_oracle(composed_job, warmup):
    job = copy.deepcopy(composed_job)
    config = StepParallelConfig(warmup=warmup)
    parts = run_local(step_latents_worker, 4, job, 2, config, timeout_s=240)
    assert [(p["step_rank"], p["clip_rank"]) for p in parts] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for clip in (0, 1):
        peers = [p for p in parts if p["clip_rank"] == clip]
        assert torch.equal(peers[0]["latents"], peers[1]["latents"])
        assert peers[0]["digests"] == peers[1]["digests"]
    schedule = step_schedule(0, 6, warmup, 2)
    assert [p["evaluations"] for p in parts] == [schedule.evaluations(2)[p["step_rank"]] for p in parts]
    gathers = [p["traffic"]["step"].get("model_output", {}).get("calls", 0) for p in parts]
    assert gathers == [len(schedule.rounds)] * 4
    oracle = _single(job) if warmup >= 6 else _single(job, SerialReferenceLoop(2, config))
    assert (_joined(parts, 0) - oracle).abs().max().item() <= 1e-4
    if warmup < 6:
        assert (_single(job) - oracle).abs().max().item() > 1e-3
