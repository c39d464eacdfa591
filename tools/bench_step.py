"""Step-parallelism benchmark: ParaStep speedup, evaluations, traffic and error.

1. Wall time of the sampling call (model loading excluded): the sequential sampler on 1 worker vs
   2 step workers, 1 thread each, default ParaStep settings (the warm-up's guidance branches split
   over the two workers) and the released code's unsplit warm-up, best of ``repeats``, on a UNet3D
   wide enough that compute dominates (its parameter count is printed), next to the ideal loop
   speedup ``T / (W + ceil((T - W) / N))``, or ``T / (W / 2 + ceil((T - W) / N))`` split (a
   one-branch call counted as half a guided call).
2. For N = 2, 3, 4 step workers (gloo processes): model evaluations and step-axis bytes per worker,
   counted by ``parallel.comm``; whether all workers end equal and equal the single-process
   :class:`parallel.step.SerialReferenceLoop` bit for bit.
3. Error against the sequential render for N = 2, 3, 4 and both reuse rules (PSNR of the decoded
   frames, relative L2 of the latents), then per sampler and per warm-up length at N = 2. These
   use the reference loop in this process, which item 2 shows is the distributed result.

    python tools/bench_step.py [--quick] [--json bench_step.json]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import decode_frames, print_table, psnr, sequential_worker, target, write_json  # noqa: E402

RULES = ("shared", "own")


def make_job(model_dir: str, frames: int, steps: int, sampler: str = "ddim"):
    from videogen.config import load_job

    overrides = [
        f"model.path={model_dir}",
        "prompts.text=a sailboat on a calm sea",
        "video.width=64",
        "video.height=64",
        f"video.num_frames={frames}",
        f"sampler.name={sampler}",
        f"sampler.steps={steps}",
        "sampler.guidance_scale=7.5",
        "parallel.launcher=local",
    ]
    return load_job(None, overrides).config


def ideal_speedup(steps: int, warmup: int, n: int, split: bool = False) -> float:
    return steps / ((warmup / 2 if split and n > 1 else warmup) + math.ceil((steps - warmup) / n))


class Renders:
    """Single-process renders of one job family on one loaded model, decoded for PSNR."""

    def __init__(self, model_dir: str, frames: int, steps: int):
        from videogen.models.loader import load_bundle

        self.model_dir, self.frames, self.steps = model_dir, frames, steps
        self.bundle = load_bundle(make_job(model_dir, frames, steps).model)
        self._sequential: dict[str, torch.Tensor] = {}

    def latents(self, sampler: str, loop=None) -> torch.Tensor:
        from videogen.pipeline import WorkerSlot, denoise

        job = make_job(self.model_dir, self.frames, self.steps, sampler)
        slot = WorkerSlot() if loop is None else WorkerSlot(loop=loop)
        return denoise(job, self.bundle, job.noise.seed, slot, progress=False)[0]

    def sequential(self, sampler: str) -> torch.Tensor:
        if sampler not in self._sequential:
            self._sequential[sampler] = self.latents(sampler)
        return self._sequential[sampler]

    def decoded(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_frames(self.bundle.vae, latents)

    def error(self, sampler: str, n: int, config) -> dict:
        """PSNR (decoded frames, dB) and relative L2 (latents) of ParaStep against the sequential render."""
        from parallel.step import SerialReferenceLoop

        exact = self.sequential(sampler)
        approx = self.latents(sampler, SerialReferenceLoop(n, config))
        return {
            "psnr_db": psnr(self.decoded(approx), self.decoded(exact)),
            "latent_rel_l2": ((approx - exact).norm() / exact.norm()).item(),
            "latents": approx,
        }


def timed(model_dir: str, frames: int, steps: int, config, repeats: int) -> dict:
    """Best-of-``repeats`` sampling times, interleaved: the sequential sampler on 1 worker, two
    independent sequential renders at once (a probe of how much of 2 cores this machine gives us
    right now), 2 step workers, and 2 step workers with the unsplit warm-up."""
    from dataclasses import replace

    from parallel.launch import run_local
    from parallel.testing import step_latents_worker

    job = make_job(model_dir, frames, steps)
    unsplit = replace(config, warmup_split=False)
    runs: dict[str, list[list[dict]]] = {"sequential": [], "probe": [], "parallel": [], "unsplit": []}
    for _ in range(repeats):
        runs["sequential"].append(run_local(sequential_worker, 1, job, num_threads=1))
        runs["probe"].append(run_local(sequential_worker, 2, job, num_threads=1))
        runs["parallel"].append(run_local(step_latents_worker, 2, job, 2, config, num_threads=1))
        runs["unsplit"].append(run_local(step_latents_worker, 2, job, 2, unsplit, num_threads=1))
    return {name: min(rs, key=_wall) for name, rs in runs.items()} | {"all": runs}


def _wall(workers: list[dict]) -> float:
    return max(w["seconds"] for w in workers)


def _cpu(workers: list[dict]) -> float:
    return max(w["cpu_seconds"] for w in workers)


def measure(model_dir: str, frames: int, steps: int, repeats: int, samplers, warmups) -> dict:
    """Every measurement of the benchmark on one model folder."""
    from parallel.launch import run_local
    from parallel.step import StepParallelConfig
    from parallel.testing import step_latents_worker

    default = StepParallelConfig()
    timing = timed(model_dir, frames, steps, default, repeats)
    job = make_job(model_dir, frames, steps)
    distributed = {2: timing["parallel"]}
    for n in (3, 4):
        distributed[n] = run_local(step_latents_worker, n, job, n, default, num_threads=1)
    renders = Renders(model_dir, frames, steps)
    errors = {
        (n, rule): renders.error("ddim", n, StepParallelConfig(default.warmup, rule, default.warmup_split))
        for n in (2, 3, 4)
        for rule in RULES
    }
    extra = [{"sampler": s, "warmup": default.warmup, **_err(renders.error(s, 2, default))} for s in samplers]
    for w in warmups:
        e = renders.error("ddim", 2, StepParallelConfig(w, default.reuse, default.warmup_split))
        ideal = ideal_speedup(steps, w, 2, split=default.warmup_split)
        extra.append({"sampler": "ddim", "warmup": w, **_err(e), "ideal_speedup": ideal})
    return {"default": default, "timing": timing, "distributed": distributed, "errors": errors, "extra": extra}


def speed_rows(m: dict, steps: int) -> list[dict]:
    """Wall and CPU seconds (slowest worker) of the three timed runs, as speedups over the sequential run.

    The probe's "speedup" is its throughput, two renders in its wall time: the most any 2-worker
    run could reach on this machine at the time (2.0 on two idle cores).
    """
    default, timing = m["default"], m["timing"]
    seq = timing["sequential"]
    rows = []
    for name, runs, renders, ideal in (
        ("sequential", seq, 1, 1.0),
        ("probe: 2 sequential at once", timing["probe"], 2, 2.0),
        (
            f"ParaStep W={default.warmup} {default.reuse}, split warm-up",
            timing["parallel"],
            1,
            ideal_speedup(steps, default.warmup, 2, split=True),
        ),
        (
            f"ParaStep W={default.warmup} {default.reuse}, unsplit warm-up",
            timing["unsplit"],
            1,
            ideal_speedup(steps, default.warmup, 2),
        ),
    ):
        rows.append(
            {
                "run": name,
                "workers": len(runs),
                "evaluations": max(w["evaluations"] for w in runs),
                "wall_s": _wall(runs),
                "cpu_s": _cpu(runs),
                "wall_speedup": renders * _wall(seq) / _wall(runs),
                "cpu_speedup": renders * _cpu(seq) / _cpu(runs),
                "ideal": ideal,
            }
        )
    return rows


def traffic_rows(m: dict, steps: int) -> list[dict]:
    """Per worker of each distributed run: evaluations, step-axis traffic, agreement with the oracle."""
    from parallel.step import step_schedule
    from parallel.testing import latent_digest

    rows = []
    for n, results in m["distributed"].items():
        reference = latent_digest(m["errors"][(n, m["default"].reuse)]["latents"])
        schedule = step_schedule(0, steps, m["default"].warmup, n)
        for r in results:
            step = r["traffic"].get("step", {})
            rows.append(
                {
                    "N": n,
                    "rank": r["step_rank"],
                    "evaluations": r["evaluations"],
                    "expected": schedule.evaluations(n, m["default"].warmup_split)[r["step_rank"]],
                    "gathers": step.get("model_output", {}).get("calls", 0),
                    "MB_sent": sum(t["bytes_sent"] for t in step.values()) / 1e6,
                    "MB_received": sum(t["bytes_received"] for t in step.values()) / 1e6,
                    "same_every_step": r["digests"] == results[0]["digests"],
                    "equals_reference": latent_digest(r["latents"]) == reference,
                }
            )
    return rows


def _err(e: dict) -> dict:
    return {"psnr_db": e["psnr_db"], "latent_rel_l2": e["latent_rel_l2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute on 2 cores)")
    parser.add_argument("--json", metavar="PATH", help="write results and targets here")
    args = parser.parse_args()

    from videogen.models.tiny import TinySpec, tiny_unet, write_tiny_model

    torch.set_num_threads(1)  # the reference renders here must use the workers' kernels to match them bit for bit
    if args.quick:
        spec, frames, steps, repeats, samplers, warmups = TinySpec((32, 64), 8, 32, 8), 8, 20, 1, (), ()
    else:
        spec, frames, steps, repeats = TinySpec((64, 128), 16, 64, 16), 16, 25, 3
        samplers, warmups = ("ddim", "euler", "dpmpp", "unipc"), (1, 2, 5)
    params = sum(p.numel() for p in tiny_unet(spec).parameters())
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(write_tiny_model(Path(tmp) / "wide", spec=spec))
        m = measure(model_dir, frames, steps, repeats, samplers, warmups)

    speed, traffic = speed_rows(m, steps), traffic_rows(m, steps)
    errors = [{"N": n, "reuse": rule, **_err(e)} for (n, rule), e in m["errors"].items()]
    shape = tuple(m["timing"]["sequential"][0]["latents"].shape)
    print(
        f"\nmodel: UNet3D {spec.unet_channels}, {params / 1e6:.2f} M parameters; {frames} frames 64x64, "
        f"latents {shape} fp32; {steps} DDIM steps, CFG 7.5, 1 thread/worker"
    )
    print_table(f"sequential vs 2 step workers (sampling call, best of {repeats})", speed)
    print_table("per worker: model evaluations and step-axis traffic", traffic)
    print_table("error against the sequential render (DDIM)", errors)
    if m["extra"]:
        print_table(f"N = 2, reuse {m['default'].reuse}: samplers and warm-up lengths", m["extra"])
    by = {(r["N"], r["reuse"]): r for r in errors}
    targets = {
        "speedup_2_step_workers": target(speed[2]["wall_speedup"], ">= 1.6"),
        "speedup_2_step_workers_unsplit_warmup": target(speed[3]["wall_speedup"], ">= 1.0"),
        "workers_differing_from_rank0": target(sum(not r["same_every_step"] for r in traffic), "<= 0"),
        "workers_differing_from_serial_reference": target(sum(not r["equals_reference"] for r in traffic), "<= 0"),
        "evaluations_off_schedule": target(sum(r["evaluations"] != r["expected"] for r in traffic), "<= 0"),
        "psnr_gain_of_shared_over_own_reuse_db": target(
            min(by[(n, "shared")]["psnr_db"] - by[(n, "own")]["psnr_db"] for n in (3, 4)), ">= 0"
        ),
    }
    results = {
        "model_parameters": params,
        "model_channels": list(spec.unet_channels),
        "frames": frames,
        "steps": steps,
        "latent_shape": list(shape),
        "config": asdict(m["default"]),
        "speed": speed,
        "all_wall_s": {name: [_wall(w) for w in runs] for name, runs in m["timing"]["all"].items()},
        "traffic": traffic,
        "error": errors,
        "samplers_and_warmup": m["extra"],
    }
    write_json(args.json, results, targets)


if __name__ == "__main__":
    main()
