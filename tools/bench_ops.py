"""Operations benchmark: how the renderer behaves as a service running many renders.

Each section is a function returning a :class:`Section` (printed tables, targets, JSON results), so
more can be added beside the ones here.

1. Batch throughput (``videogen batch`` on Ray): ``M`` one-worker jobs of the tiny model (1 torch
   thread each, a few seconds per render, model load included) on one local Ray instance of 2 CPUs,
   with one replica at a time (``max_parallel: 1``) and with as many as the instance holds (2).
   Throughput is jobs per second of the whole batch's wall time; a warm-up batch first starts Ray's
   worker pool, so neither run pays for it. On a machine with 2 free cores two replicas should
   finish close to twice as many jobs per second.
   ``cores_used`` is the CPU seconds this process and its descendants (Ray and its workers) spent per
   wall second: below 2 in the two-replica run, the machine had fewer than two cores to give. The
   workers run at the driver's priority (``RAY_worker_niceness=0``; Ray's default puts them 15 nice
   levels down, behind any other work on the machine). A *probe* renders the same jobs on one plain
   process and then on two (no Ray): its ratio is what this machine gives two processes, and the
   batch's ratio over it is what Ray's scheduling keeps of that.
2. Soak figures of the same runs: this process's descendant processes (Ray's own and its workers),
   open file descriptors and RSS before the first timed batch and after the last one has settled;
   growth would be a leak per batch.
3. ``videogen plan``'s bytes: for clip, patch, cfg, step and combined meshes (local processes), the
   bytes each worker is predicted to receive over the render, without weights, against what that
   worker of the real render records in ``.meta.json``; every worker must match exactly.
4. Recovery: a 2-worker Ray render whose rank 1 is killed (SIGKILL) once it has passed its first
   checkpoint, against the same render uninterrupted: wall time of both, restarts, and the steps
   computed twice (the steps done at the kill past the checkpoint resumed from), which must not
   exceed the checkpoint interval.

The machine's load average before and after is printed and recorded: on a machine busy with other
work the replicas share fewer than two cores and the ratio says so.

    python tools/bench_ops.py [--quick] [--json bench_ops.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import print_table, target, write_json  # noqa: E402


@dataclass
class Section:
    """What one section measured: ``tables`` (title, rows) to print, ``targets`` to check, ``results`` for JSON."""

    name: str
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    """Shared by the sections: the model folder, a scratch folder and the size of the run."""

    model_dir: Path
    scratch: Path
    quick: bool


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds used so far by the living processes ``pids``."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def process_figures() -> dict[str, float]:
    """This process's descendant processes, open file descriptors and RSS (MiB)."""
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {
        "processes": len(descendants(os.getpid())),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_mib": round(rss / 2**20, 1),
    }


def _write_manifest(setup: Setup, name: str, jobs: int, frames: int, steps: int, max_parallel: int) -> Path:
    import yaml

    manifest = {
        "base": {
            "model.path": str(setup.model_dir),
            "prompts.text": "a red balloon over a green field",
            "video": {"width": 64, "height": 64, "num_frames": frames},
            "sampler": {"steps": steps, "guidance_scale": 7.5},
            "parallel.threads_per_worker": 1,
            "ray.cpus_per_worker": 1,
        },
        "seeds": jobs,
        "out": str(setup.scratch / name),
        "name": "s{seed}.mp4",
        "launcher": "ray",
        "max_parallel": max_parallel,
    }
    path = setup.scratch / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def _run_batch(manifest: Path) -> tuple[float, list, float]:
    """(wall seconds, rows, cores used: CPU seconds of this process and its descendants per wall second)."""
    from videogen.batch.manifest import load_manifest, plan_batch
    from videogen.batch.runner import run_batch

    pids = descendants(os.getpid()) | {os.getpid()}
    cpu_started, started = cpu_seconds(pids), time.perf_counter()
    report = run_batch(plan_batch(load_manifest(manifest)), progress=False)
    seconds = time.perf_counter() - started
    cores = (cpu_seconds(pids) - cpu_started) / seconds  # Ray's pooled workers live on between batches
    failed = [row for row in report.rows if row.status != "done"]
    if failed:
        raise RuntimeError(f"{manifest.name}: {failed[0].name} {failed[0].status}: {failed[0].error}")
    return seconds, report.rows, cores


def probe_worker(rank: int, world_size: int, model_dir: str, out: str, renders: int, frames: int, steps: int) -> float:
    """In a plain local process: ``renders`` one-worker renders one after another, timed from a barrier
    that every probe process passes (so the slowest process's time is the probe's wall time)."""
    import torch.distributed as dist

    from videogen.api import render_job

    overrides = [
        f"model.path={model_dir}",
        "prompts.text=a red balloon over a green field",
        "video.width=64",
        "video.height=64",
        f"video.num_frames={frames}",
        f"sampler.steps={steps}",
        "sampler.guidance_scale=7.5",
    ]
    dist.barrier()
    started = time.perf_counter()
    for i in range(renders):
        seed = rank * renders + i
        render_job(
            None, [*overrides, f"noise.seed={seed}", f"output.path={out}/p{world_size}_s{seed}.mp4"], progress=False
        )
    return time.perf_counter() - started


def probe(setup: Setup, jobs: int, frames: int, steps: int) -> float:
    """What this machine gives two plain processes (no Ray) over one: the same ``jobs`` renders on one
    process, then split over two; the ratio of their wall times."""
    from parallel.launch import run_local

    out, args = str(setup.scratch / "probe"), (frames, steps)
    one = max(run_local(probe_worker, 1, str(setup.model_dir), out, jobs, *args, num_threads=1))
    two = max(run_local(probe_worker, 2, str(setup.model_dir), out, jobs // 2, *args, num_threads=1))
    return one / two


def _settled(before: dict[str, float], timeout_s: float = 30.0) -> dict[str, float]:
    """The figures once Ray's finished workers have exited (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = process_figures()
        if after["processes"] <= before["processes"] or time.monotonic() > deadline:
            return after
        time.sleep(1.0)


def section_batch_throughput(setup: Setup) -> Section:
    """Section 1 and 2: batch throughput, one replica at a time vs two, and the soak figures."""
    import ray

    jobs, frames, steps = (4, 16, 12) if setup.quick else (8, 16, 20)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray starts its workers 15 nice levels below the raylet; on a machine shared with other work the
    # renders would then measure that work's priority, not the batch's scaling
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        _run_batch(_write_manifest(setup, "warmup", 2, frames, 2, 0))  # Ray's worker pool, imports
        time.sleep(2.0)
        before = process_figures()
        runs: dict[int, tuple[float, list, float]] = {}
        for concurrency in (1, 2):
            runs[concurrency] = _run_batch(
                _write_manifest(setup, f"at_once_{concurrency}", jobs, frames, steps, concurrency)
            )
        after = _settled(before)
    finally:
        ray.shutdown()
    rows = []
    for concurrency, (seconds, report, cores) in runs.items():
        render_seconds = [row.seconds for row in report]
        rows.append(
            {
                "replicas_at_once": concurrency,
                "jobs": jobs,
                "frames": frames,
                "steps": steps,
                "wall_s": seconds,
                "jobs_per_min": 60 * jobs / seconds,
                "mean_render_s": sum(render_seconds) / len(render_seconds),
                "cores_used": cores,
            }
        )
    ratio = runs[1][0] / runs[2][0]
    probe_ratio = probe(setup, jobs, frames, steps)
    ratios = [
        {"what": "batch on Ray: 2 replicas at once vs 1", "ratio": ratio},
        {"what": "probe: 2 plain processes vs 1, no Ray", "ratio": probe_ratio},
        {"what": "batch ratio / probe ratio", "ratio": ratio / probe_ratio},
    ]
    soak = [{"when": "before", **before}, {"when": "after", **after}]
    growth = {key: after[key] - before[key] for key in before}
    return Section(
        "batch",
        tables=[
            (f"batch throughput: {jobs} one-worker jobs (64x64, {frames} frames, {steps} steps, 1 thread)", rows),
            ("throughput ratios (wall time of 1 over wall time of 2)", ratios),
            (f"soak: this process's descendants, open fds and RSS around {2 * jobs} renders", soak),
        ],
        targets={
            "batch_throughput_2_vs_1": target(ratio, ">= 1.8"),
            "batch_throughput_2_vs_1_over_probe": target(ratio / probe_ratio, ">= 0.9"),
            "batch_soak_process_growth": target(growth["processes"], "<= 1"),
            "batch_soak_fd_growth": target(growth["fds"], "<= 8"),
        },
        results={
            "throughput": rows,
            "ratios": ratios,
            "throughput_ratio_2_vs_1": ratio,
            "probe_ratio_2_vs_1": probe_ratio,
            "soak": soak,
            "soak_growth": growth,
        },
    )


PLAN_MESHES = {
    "clip=2": ["parallel.clip=2"],
    "patch=2 displaced": ["parallel.patch=2", "parallel.patch_options.warmup_steps=1"],
    "cfg=2 x clip=2": ["parallel.cfg=2", "parallel.clip=2"],
    "step=2": ["parallel.step=2", "parallel.step_warmup=1"],
    "dual-scope clip=2 x patch=2": [
        "parallel.clip=2",
        "parallel.clip_mode=dual_scope",
        "parallel.dual_scope.local_radius=2",
        "parallel.dual_scope.global_frames=2",
        "parallel.patch=2",
    ],
}


def _job_overrides(setup: Setup, frames: int, steps: int, out: Path) -> list[str]:
    return [
        f"model.path={setup.model_dir}",
        "prompts.text=a red balloon over a green field",
        "video.width=64",
        "video.height=64",
        f"video.num_frames={frames}",
        f"sampler.steps={steps}",
        "sampler.guidance_scale=7.5",
        "parallel.threads_per_worker=1",
        f"output.path={out}",
    ]


def section_plan_bytes(setup: Setup) -> Section:
    """Section 3: ``videogen plan``'s predicted bytes against what each worker of the render records."""
    from parallel.plan import measured_traffic, plan_render
    from videogen.api import render_job
    from videogen.config import load_job

    steps = 3 if setup.quick else 6
    rows, mismatched = [], 0
    for name, mesh in PLAN_MESHES.items():
        out = setup.scratch / "plan" / f"{name.replace(' ', '_').replace('=', '')}.mp4"
        overrides = [*_job_overrides(setup, 8, steps, out), "parallel.launcher=local", *mesh]
        plan = plan_render(load_job(None, overrides).config)
        render_job(None, overrides, progress=False)
        reports = json.loads(out.with_name(out.name + ".meta.json").read_text())["worker_reports"]
        measured = [measured_traffic(r["traffic"]) for r in sorted(reports, key=lambda r: r["rank"])]
        wrong = sum(m != p for m, p in zip(measured, plan.traffic, strict=True))
        mismatched += wrong
        predicted_total = sum(sum(k.values()) for w in plan.traffic for k in w.values()) / len(plan.traffic)
        measured_total = sum(sum(k.values()) for w in measured for k in w.values()) / len(measured)
        rows.append(
            {
                "mesh": name,
                "workers": plan.world_size,
                "steps": steps,
                "predicted_MB_per_step": predicted_total / steps / 1e6,
                "measured_MB_per_step": measured_total / steps / 1e6,
                "workers_differing": wrong,
            }
        )
    return Section(
        "plan_bytes",
        tables=[("videogen plan: predicted vs recorded bytes received per worker (mean), per step", rows)],
        targets={"plan_bytes_workers_differing": target(mismatched, "<= 0")},
        results={"plan_bytes": rows},
    )


def section_recovery(setup: Setup) -> Section:
    """Section 4: a Ray render that loses a worker (SIGKILL after its first checkpoint) against one that
    does not: wall time, restarts, and the denoising steps computed twice."""
    import signal
    import threading

    import ray

    from parallel.ray_runtime import render_on_ray
    from videogen.config import load_job

    steps, every = (10, 3) if setup.quick else (20, 4)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:

        def run(name: str, kill: bool) -> dict[str, Any]:
            out = setup.scratch / "recovery" / name
            overrides = [*_job_overrides(setup, 9, steps, out), "parallel.clip=2", f"sampler.checkpoint_every={every}"]
            job = load_job(None, overrides).config
            seen: dict[str, Any] = {}

            def sabotage(actors) -> None:
                if not kill or seen:
                    return
                seen["pid"] = ray.get(actors[1].pid.remote())

                def act() -> None:
                    while True:
                        phase, step, _ = ray.get(actors[1].progress.remote())
                        if phase == "denoise" and step >= every + 2:  # mid-interval, past the first checkpoint
                            seen["step_at_kill"] = step
                            os.kill(seen["pid"], signal.SIGKILL)
                            return
                        time.sleep(0.01)

                threading.Thread(target=act, daemon=True).start()

            started = time.perf_counter()
            reports = render_on_ray(job, 2, resume=False, progress=False, on_started=sabotage)
            seconds = time.perf_counter() - started
            resumed = reports[0].resumed_from_step
            recomputed = seen["step_at_kill"] - (resumed + 1) if kill and resumed is not None else 0
            return {
                "run": name,
                "wall_s": seconds,
                "restarts": reports.restarts,
                "resumed_from_step": resumed,
                "step_at_kill": seen.get("step_at_kill"),
                "steps_recomputed": recomputed,
                "checkpoint_every": every,
            }

        clean = run("uninterrupted", kill=False)
        killed = run("one_worker_killed", kill=True)
    finally:
        ray.shutdown()
    overhead = killed["wall_s"] / clean["wall_s"]
    return Section(
        "recovery",
        tables=[
            (f"recovery on Ray: 2 clip workers, {steps} steps, one killed after a checkpoint", [clean, killed]),
            (
                "recovery overhead (new actors, model loads, steps after the checkpoint)",
                [{"wall_killed/clean": overhead}],
            ),
        ],
        targets={
            "recovery_steps_recomputed_within_checkpoint_interval": target(killed["steps_recomputed"] - every, "<= 0"),
            "recovery_restarts": target(killed["restarts"], ">= 1"),
        },
        results={"recovery": [clean, killed], "recovery_wall_ratio_killed_vs_clean": overhead},
    )


SECTIONS: list[Callable[[Setup], Section]] = [section_batch_throughput, section_plan_bytes, section_recovery]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute on 2 cores)")
    parser.add_argument("--json", metavar="PATH", help="write results and targets here")
    args = parser.parse_args()

    from videogen.models.tiny import write_tiny_model

    sections = []
    load_before = os.getloadavg()  # other work on the machine takes cores from the replicas
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(write_tiny_model(Path(tmp) / "tiny", seed=0), Path(tmp), args.quick)
        for run in SECTIONS:
            sections.append(run(setup))
    targets: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {
        "quick": args.quick,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print(f"\nload average (1, 5, 15 min) before: {load_before}, after: {results['load_average_after']}")
    for section in sections:
        for title, rows in section.tables:
            print_table(title, rows)
        targets.update(section.targets)
        results[section.name] = section.results
    write_json(args.json, results, targets)


if __name__ == "__main__":
    main()
