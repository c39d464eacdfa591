"""Ray actors for multi-worker renders: one actor per worker in a placement group.

The Ray Train pattern: rank 0's actor reports its node address and a free port, every actor
joins the torch.distributed group there (NCCL when it holds a GPU, gloo otherwise), then the
same :func:`parallel.render.render_worker` runs on every actor. With ``ray.address`` unset (and
no ``RAY_ADDRESS``, which ``ray job submit`` sets) the render starts a local Ray instance bound
to 127.0.0.1 and stops it afterwards; with an address it joins that cluster.

A worker that dies (its process killed, out of memory, a node lost) leaves the others blocked
in a collective, so the whole group is torn down at once and the render fails with an error
naming the dead rank. Latent checkpoints written so far stay for ``--resume``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from parallel.launch import find_free_port, init_worker_process_group, write_failure_log
from parallel.render import WorkerReport, render_worker
from videogen.config import JobConfig
from videogen.errors import VideogenError

ACTOR_NAME = "videogen-rank{rank}"
NAMESPACE = "videogen"


@ray.remote(max_concurrency=2)
class RenderActor:
    """One render worker. ``max_concurrency=2`` lets ``pid`` answer while ``run`` is busy."""

    def __init__(self, rank: int, world_size: int, threads: int):
        import torch

        self.rank, self.world_size = rank, world_size
        if threads > 0:
            torch.set_num_threads(threads)

    def pid(self) -> int:
        return os.getpid()

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), find_free_port("")

    def run(self, addr: str, port: int, job: JobConfig, resume: bool, progress: bool) -> WorkerReport:
        import torch.distributed as dist

        init_worker_process_group(self.rank, self.world_size, addr, port)
        try:
            return render_worker(self.rank, self.world_size, job, resume, progress)
        finally:
            dist.destroy_process_group()


def _connect(job: JobConfig, world_size: int) -> bool:
    """Join ``ray.address`` or start a local instance; True when this call started Ray."""
    if ray.is_initialized():
        return False
    address = job.ray.address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address:
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise VideogenError(f"ray.address: cannot join the Ray cluster at {address}: {error}") from None
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private instance bound to 127.0.0.1
    cpus = max(os.cpu_count() or 1, int(world_size * max(job.ray.cpus_per_worker, 1)))
    ray.init(
        num_cpus=cpus,
        namespace=NAMESPACE,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
    )
    return True


def _gpus_per_worker(job: JobConfig) -> float:
    if job.ray.gpus_per_worker >= 0:
        return job.ray.gpus_per_worker
    if job.model.device == "cpu":
        return 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


GRACE_S = 5.0  # after a first failure, how long to wait for the other workers' fate


def _outcome(ref) -> Exception | None:
    try:
        ray.get(ref, timeout=0)
    except (RayActorError, RayTaskError) as error:
        return error
    return None


def _first_line(error: BaseException, default: str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else default


def _failure(rank: int, error: Exception) -> VideogenError:
    """One line for the root-cause failure; Ray's full report (the remote traceback) goes to a log file
    that the line names. A user's mistake found by a worker (a :class:`VideogenError`) is its own line."""
    cause = error.cause if isinstance(error, RayTaskError) and error.cause is not None else error
    if isinstance(cause, VideogenError) and not isinstance(error, RayActorError):
        return type(cause)(_first_line(cause, type(cause).__name__))
    log = write_failure_log(f"worker rank {rank}:\n{error}", "ray-render")
    if isinstance(error, RayActorError):
        reason = _first_line(error, "the actor process exited")
        return VideogenError(
            f"worker rank {rank} died ({reason}); all workers were stopped, no video was written, "
            f"latent checkpoints so far are kept for --resume; Ray's report is in {log}"
        )
    what = _first_line(cause, "no message")
    return VideogenError(f"worker rank {rank} failed: {type(cause).__name__}: {what}; traceback in {log}")


def _wait_all(refs: list) -> list[WorkerReport]:
    """Collect every worker's report, or raise for the root-cause failure.

    When a worker dies its peers fail too, in the collective they were blocked in, and either
    may be noticed first; so after the first failure the others get :data:`GRACE_S` to settle,
    and a dead actor is blamed before a worker that merely lost its peer.
    """
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        if _outcome(ready[0]) is None:
            continue
        ray.wait(pending, num_returns=len(pending), timeout=GRACE_S)
        failures = {rank: err for rank, ref in enumerate(refs) if (err := _outcome_if_done(ref)) is not None}
        dead = [rank for rank, err in failures.items() if isinstance(err, RayActorError)]
        rank = dead[0] if dead else min(failures)
        raise _failure(rank, failures[rank]) from None
    return [ray.get(ref) for ref in refs]


def _outcome_if_done(ref) -> Exception | None:
    ready, _ = ray.wait([ref], timeout=0)
    return _outcome(ref) if ready else None


def render_on_ray(
    job: JobConfig,
    world_size: int,
    resume: bool,
    progress: bool = True,
    on_started: Callable[[list], None] | None = None,
) -> list[WorkerReport]:
    """Run :func:`render_worker` on ``world_size`` Ray actors; returns their reports by rank.

    ``on_started(actors)`` is called once every actor exists (used to watch or stop them).
    """
    started_ray = _connect(job, world_size)
    group, actors = None, []
    try:
        gpus = _gpus_per_worker(job)
        bundle = {"CPU": job.ray.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
        group = placement_group([dict(bundle) for _ in range(world_size)], strategy=job.ray.placement)
        try:
            ray.get(group.ready(), timeout=job.ray.startup_timeout_s)
        except GetTimeoutError:
            raise VideogenError(
                f"ray: the cluster cannot place {world_size} workers of {bundle} ({job.ray.placement}) within "
                f"{job.ray.startup_timeout_s:.0f} s; it has {ray.cluster_resources()}"
            ) from None
        threads = job.parallel.threads_per_worker
        for rank in range(world_size):
            strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank)
            actors.append(
                RenderActor.options(
                    name=ACTOR_NAME.format(rank=rank),
                    num_cpus=job.ray.cpus_per_worker,
                    num_gpus=gpus,
                    scheduling_strategy=strategy,
                ).remote(rank, world_size, threads)
            )
        addr, port = ray.get(actors[0].address.remote())
        refs = [a.run.remote(addr, port, job, resume, progress and r == 0) for r, a in enumerate(actors)]
        if on_started is not None:
            on_started(actors)
        return _wait_all(refs)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if group is not None:
            remove_placement_group(group)
        if started_ray:
            ray.shutdown()
