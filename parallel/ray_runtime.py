"""Ray actors for multi-worker renders: one actor per worker in a placement group.

The Ray Train pattern: rank 0's actor reports its node address and a free port, every actor
joins the torch.distributed group there (NCCL when it holds a GPU, gloo otherwise), then the
same :func:`parallel.render.render_worker` runs on every actor.

Joining. With ``ray.address`` unset (and no ``RAY_ADDRESS``, which ``ray job submit`` sets) the
render starts a private local Ray instance bound to 127.0.0.1 and stops it afterwards, whatever
cluster an earlier ``ray start`` left recorded on this machine. With an address it joins that
cluster, after checking that the address answers within ``ray.connect_timeout_s``.

Before any worker starts, what needs no worker is checked: the workers' device against the job
(``model.device``, ``model.dtype``, ``model.attention`` on CPU-only workers) and whether the
cluster's nodes could ever hold the placement group, so an impossible job fails at once, with
the numbers, instead of after ``ray.startup_timeout_s``.

Recovery. A worker that dies (its process killed, out of memory, a node lost) leaves the others
blocked in a collective; a worker that stops answering the driver's pings for
``ray.hang_timeout_s`` (a stopped or frozen process, an unreachable node) is treated the same.
The whole group is stopped at once. Up to ``ray.max_restarts`` times the driver then forms a new
group (new actors, placement group and rendezvous port) that resumes from the newest checkpoint
every worker shares, or starts over when there is none; the video is the one an uninterrupted
render gives. With ``ray.max_restarts`` > 0 and ``sampler.checkpoint_every: 0``, checkpoints are
written every :func:`recovery_checkpoint_every` steps and removed once the video is written.
When no restart is left the render fails with one line naming the lost rank; the latent
checkpoints written so far stay for ``--resume``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from safetensors import SafetensorError, safe_open

from parallel.job_plan import job_clips, plan_of
from parallel.launch import find_free_port, init_worker_process_group, write_failure_log
from parallel.render import WorkerReport, render_worker
from videogen.checkpoint import checkpoint_dir, checkpoint_steps, job_fingerprint
from videogen.config import JobConfig
from videogen.errors import ConfigError, VideogenError
from videogen.io.atomic import check_target
from videogen.models.attention import check_backend
from videogen.models.loader import DTYPES

ACTOR_NAME = "videogen-{group}-rank{rank}"  # one name per worker of each group formed
NAMESPACE = "videogen"
RAY_CLIENT_PORT = 10001  # Ray Client's port when a ray:// address names none
CONNECT_TIMEOUT_S = 20.0  # for callers whose job has no ray.connect_timeout_s (training jobs)
GRACE_S = 5.0  # after a first failure, how long to wait for the other workers' fate
POLL_S = 1.0  # how often the driver pings its workers (more often with a short ray.hang_timeout_s)
STOP_WAIT_S = 30.0  # after a lost group, how long to wait for Ray to declare its actors dead
COLLECTIVE_GRACE_S = 60.0  # a collective's own timeout is ray.hang_timeout_s + this


@ray.remote(max_concurrency=4)
class RenderActor:
    """One render worker. ``max_concurrency`` lets its other methods answer while ``run`` is busy: the
    driver's liveness pings (``pid``) and whoever watches the workers (``on_started``)."""

    def __init__(self, rank: int, world_size: int, threads: int):
        self.rank, self.world_size = rank, world_size
        self._phase, self._step, self._changed = "starting", 0, time.monotonic()
        if threads > 0:
            torch.set_num_threads(threads)

    def pid(self) -> int:
        return os.getpid()

    def progress(self) -> tuple[str, int, float]:
        """(phase, denoising steps done, seconds since either last changed), answered while ``run`` works."""
        return self._phase, self._step, time.monotonic() - self._changed

    def _note(self, phase: str, step: int) -> None:
        self._phase, self._step, self._changed = phase, step, time.monotonic()

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), find_free_port("")

    def checkpoints(self, job: JobConfig) -> dict[int, bool]:
        """The checkpoint steps saved for this worker's frames, each with whether it belongs to ``job``."""
        own = job_fingerprint(job)
        return {step: fingerprint == own for step, (_, fingerprint) in _saved(job, self.rank).items()}

    def discard_checkpoints(self, job: JobConfig) -> None:
        """Remove ``job``'s checkpoints of this worker's frames, and the checkpoint folder once it is empty."""
        own = job_fingerprint(job)
        for path, fingerprint in _saved(job, self.rank).values():
            if fingerprint == own:
                path.unlink(missing_ok=True)
        try:
            checkpoint_dir(job).rmdir()
        except OSError:
            pass  # not empty (a peer's files, a user's), or already gone

    def run(
        self,
        addr: str,
        port: int,
        job: JobConfig,
        resume: bool,
        progress: bool,
        started_at: float,
        record: dict,
        asked: JobConfig,
    ) -> WorkerReport:
        import torch.distributed as dist

        # the watchdog, not the process group's own timeout, must notice a stuck collective first
        timeout = job.ray.hang_timeout_s + COLLECTIVE_GRACE_S
        init_worker_process_group(self.rank, self.world_size, addr, port, timeout_s=timeout)
        try:
            return render_worker(
                self.rank,
                self.world_size,
                job,
                resume,
                progress,
                started_at,
                on_progress=self._note,
                record=record,
                asked=asked,
            )
        finally:
            dist.destroy_process_group()


def _saved(job: JobConfig, rank: int) -> dict[int, tuple[Path, str | None]]:
    """Checkpoints of ``rank``'s frames, as the worker sees them: step -> (file, job fingerprint or None)."""
    frames = job_clips(job)[plan_of(job).coords(rank)["clip"]]
    directory = checkpoint_dir(job)
    steps = set(checkpoint_steps(directory, frames))
    found: dict[int, tuple[Path, str | None]] = {}
    for path in directory.glob(f"step*.frames{frames.start}-{frames.stop}.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            step = int(meta["step"])
        except (OSError, RuntimeError, ValueError, KeyError, SafetensorError):
            continue  # unreadable: never resumed from here
        if step in steps:
            found[step] = (path, meta.get("fingerprint"))
    return found


# -- joining a cluster ---------------------------------------------------------------------------------------


def _bootstrap(address: str, key: str) -> tuple[str, int] | None:
    """The (host, port) the driver first connects to for ``address``; None when that is not known here."""
    if address.startswith("ray://"):
        rest, default = address.removeprefix("ray://").split("/", 1)[0], RAY_CLIENT_PORT
    elif "://" in address:
        return None
    elif address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            rest, default = canonicalize_bootstrap_address("auto"), None
        except ConnectionError as error:
            raise VideogenError(f"{key}: auto: {_first_line(error, 'no running Ray cluster found')}") from None
        except Exception:  # Ray's own lookup failed some other way: let ray.init report it
            return None
        if rest is None:
            return None
    else:
        rest, default = address, None
    host, colon, port = rest.rpartition(":")
    if not colon:
        host, port = rest, default
    try:
        return host.strip("[]"), int(port)
    except (TypeError, ValueError):
        return None  # no port: ray.init says what is wrong with the address


def _probe(address: str, key: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` unless something accepts connections where ``address`` points
    (``ray.init`` would otherwise retry a dead address for many minutes)."""
    target = _bootstrap(address, key)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s (ray.connect_timeout_s)"
    except ConnectionRefusedError:
        reason = f"nothing listens on {host}:{port}"
    except socket.gaierror:
        reason = f"unknown host {host}"
    except OSError as error:
        reason = error.strerror or _first_line(error, type(error).__name__)
    raise VideogenError(f"{key}: cannot reach the Ray cluster at {address}: {reason}")


def _connect(job, world_size: int) -> bool:
    """Join ``ray.address`` (or ``RAY_ADDRESS``) or start a private local instance; True when this call
    started or joined Ray (and so must shut it down). ``job`` is a render or a training job."""
    if ray.is_initialized():
        return False
    address = job.ray.address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address and address != "local":
        key = "ray.address" if job.ray.address else "RAY_ADDRESS"
        _probe(address, key, getattr(job.ray, "connect_timeout_s", CONNECT_TIMEOUT_S))
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise VideogenError(f"{key}: cannot join the Ray cluster at {address}: {_first_line(error, '')}") from None
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private instance bound to 127.0.0.1
    cpus = max(os.cpu_count() or 1, int(world_size * max(job.ray.cpus_per_worker, 1)))
    ray.init(
        address="local",  # never the cluster recorded by an earlier `ray start` (ray_current_cluster)
        num_cpus=cpus,
        namespace=NAMESPACE,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
    )
    return True


# -- checks before any worker starts ---------------------------------------------------------------------------


def _gpus_per_worker(job: JobConfig) -> float:
    if job.ray.gpus_per_worker >= 0:
        return job.ray.gpus_per_worker
    if job.model.device == "cpu":
        return 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _check_device(job: JobConfig, gpus: float) -> None:
    """Refuse a model placement that workers without a GPU cannot run, naming the user's key."""
    if gpus > 0:
        return
    if job.ray.gpus_per_worker == 0:
        why = "ray.gpus_per_worker is 0"
    elif job.model.device == "cpu":
        why = "model.device is cpu"
    else:
        why = "the Ray cluster has no GPU"
    if job.model.device.startswith("cuda"):
        raise ConfigError(f"model.device: {job.model.device} asked for, but the Ray workers get no GPU ({why})")
    if job.model.dtype == "fp16":
        raise ConfigError(f"model.dtype: fp16 is for GPUs and the Ray workers run on the CPU ({why}); use fp32 or bf16")
    check_backend(job.model.attention, torch.device("cpu"), DTYPES[job.model.dtype])


def _amounts(resources: dict[str, float]) -> str:
    return " + ".join(f"{value:g} {name}" for name, value in resources.items())


def _check_placement(bundle: dict[str, float], world_size: int, strategy: str) -> None:
    """Fail at once when the cluster's nodes, even idle, could never hold ``world_size`` bundles."""
    if not any(bundle.values()):
        raise ConfigError("ray.cpus_per_worker: 0, and no GPU per worker, gives Ray nothing to place a worker by")
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    except Exception:  # the check is a courtesy; the placement group's own timeout remains
        return
    fits = [min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0) for node in nodes]
    if strategy == "STRICT_PACK":
        room, where = max(fits, default=0), " on one node (STRICT_PACK)"
    elif strategy == "STRICT_SPREAD":
        room, where = sum(1 for n in fits if n), " each on its own node (STRICT_SPREAD)"
    else:
        room, where = sum(fits), ""
    if room >= world_size:
        return
    need = {k: v * world_size for k, v in bundle.items()}
    have = {k: sum(node.get(k, 0.0) for node in nodes) for k in bundle}
    raise VideogenError(
        f"ray: {world_size} workers of {_amounts(bundle)} need {_amounts(need)}{where}, but the cluster has "
        f"{_amounts(have)} on {len(nodes)} node{'s' if len(nodes) != 1 else ''}, room for {room} such workers; "
        "lower ray.cpus_per_worker or ray.gpus_per_worker, use fewer workers, or add nodes"
    )


def recovery_checkpoint_every(steps: int) -> int:
    """The checkpoint interval a render that may restart uses when the job sets none: ten per render."""
    return max(1, steps // 10)


def with_recovery_checkpoints(job: JobConfig) -> JobConfig:
    """``job``, or a copy that writes checkpoints when it may restart and sets no interval itself."""
    if job.ray.max_restarts > 0 and job.sampler.checkpoint_every == 0:
        sampler = dataclasses.replace(job.sampler, checkpoint_every=recovery_checkpoint_every(job.sampler.steps))
        return dataclasses.replace(job, sampler=sampler)
    return job


# -- failures ----------------------------------------------------------------------------------------------------


def _first_line(error: BaseException, default: str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else default


@dataclass
class _Loss:
    """A worker that died or hung, taking its group with it."""

    rank: int
    what: str  # "died (...)" or "stopped answering ..."
    log: str | None = None  # Ray's full report

    def error(self, restarts: int = 0) -> VideogenError:
        after = f" after {restarts} restart{'s' if restarts != 1 else ''} (ray.max_restarts)" if restarts else ""
        report = f"; Ray's report is in {self.log}" if self.log else ""
        return VideogenError(
            f"worker rank {self.rank} {self.what}{after}; all workers were stopped, no video was written, "
            f"latent checkpoints so far are kept for --resume{report}"
        )


class _GroupLost(Exception):
    def __init__(self, loss: _Loss):
        super().__init__(loss.what)
        self.loss = loss


def _died(rank: int, error: RayActorError) -> _Loss:
    log = write_failure_log(f"worker rank {rank}:\n{error}", "ray-render")
    return _Loss(rank, f"died ({_first_line(error, 'the actor process exited')})", log)


def _failure(rank: int, error: Exception) -> VideogenError:
    """One line for the root-cause failure; Ray's full report (the remote traceback) goes to a log file
    that the line names. A user's mistake found by a worker (a :class:`VideogenError`) is its own line."""
    if isinstance(error, RayActorError):
        return _died(rank, error).error()
    cause = error.cause if isinstance(error, RayTaskError) and error.cause is not None else error
    if isinstance(cause, VideogenError):
        return type(cause)(_first_line(cause, type(cause).__name__))
    log = write_failure_log(f"worker rank {rank}:\n{error}", "ray-render")
    what = _first_line(cause, "no message")
    return VideogenError(f"worker rank {rank} failed: {type(cause).__name__}: {what}; traceback in {log}")


def _outcome(ref) -> Exception | None:
    try:
        ray.get(ref, timeout=0)
    except (RayActorError, RayTaskError) as error:
        return error
    return None


def _outcome_if_done(ref) -> Exception | None:
    ready, _ = ray.wait([ref], timeout=0)
    return _outcome(ref) if ready else None


def _ask(refs: list, timeout_s: float, key: str) -> list:
    """Every worker's answer (one ref per rank); a worker that died or did not answer within ``timeout_s``
    loses the group, any other failure is raised as the render's error."""
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for rank, ref in enumerate(refs):
        if ref in pending:
            raise _GroupLost(_Loss(rank, f"did not answer within {timeout_s:g} s ({key})"))
        error = _outcome(ref)
        if isinstance(error, RayActorError):
            raise _GroupLost(_died(rank, error))
        if error is not None:
            raise _failure(rank, error) from None
    return ray.get(refs)


def stalled(phase: str, idle_s: float, timeout_s: float) -> bool:
    """Whether a worker that answers but has spent ``idle_s`` in ``phase`` without a denoising step is stuck:
    only steps are regular enough to time (loading and decoding take as long as the model and video need)."""
    return phase == "denoise" and idle_s > timeout_s


class _Watchdog:
    """Asks every worker for its progress (answered by a thread of its own) and names the first that
    is lost: one whose answer has not come for ``timeout_s`` (a stopped or frozen process, a node that
    cannot be reached), or one that answers but has made no denoising step for ``timeout_s`` (a
    deadlocked collective)."""

    def __init__(self, actors: list, timeout_s: float):
        self.actors, self.timeout_s = actors, timeout_s
        self.interval = min(POLL_S, timeout_s / 4)
        self.pings: list[tuple | None] = [None] * len(actors)  # (ref, sent at)
        self.due = 0.0

    def lost(self) -> tuple[int, str] | None:
        """(rank, what happened) for the first lost worker, or None.

        A worker that does not answer is blamed before one that answers but is stalled: when one
        process stops, its peers stall in their next collective with it, and the stopped one is the cause.
        """
        now = time.monotonic()
        if now < self.due:
            return None
        self.due = now + self.interval
        waiting, stalled_rank = False, None
        for rank, actor in enumerate(self.actors):
            ping = self.pings[rank]
            if ping is not None and not ray.wait([ping[0]], timeout=0)[0]:
                if now - ping[1] > self.timeout_s:
                    return rank, f"stopped answering for {self.timeout_s:g} s (ray.hang_timeout_s)"
                waiting = True
                continue
            if ping is not None and (answer := _answer(ping[0])) is not None:
                phase, step, idle = answer
                if stalled_rank is None and stalled(phase, idle, self.timeout_s):
                    stalled_rank = (rank, step, idle)
            self.pings[rank] = (actor.progress.remote(), now)  # a dead actor's failed ping: its run ref tells
        if stalled_rank is not None and not waiting:
            rank, step, idle = stalled_rank
            return rank, (
                f"made no denoising step for {idle:.0f} s after step {step} (ray.hang_timeout_s "
                f"{self.timeout_s:g}): a collective is stuck"
            )
        return None


def _answer(ref) -> tuple[str, int, float] | None:
    try:
        return ray.get(ref, timeout=0)
    except (RayActorError, RayTaskError, GetTimeoutError):
        return None


def _wait_all(refs: list, actors: list | None = None, hang_timeout_s: float | None = None) -> list[WorkerReport]:
    """Collect every worker's report, or raise for the root-cause failure.

    When a worker dies its peers fail too, in the collective they were blocked in, and either
    may be noticed first; so after a first failure that is not a death the others get
    :data:`GRACE_S` to settle, and a dead actor is blamed before a worker that merely lost its peer.
    A death, or a worker that stops answering (``actors`` and ``hang_timeout_s`` given), raises
    :class:`_GroupLost`.
    """
    watchdog = _Watchdog(actors, hang_timeout_s) if actors and hang_timeout_s else None
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=watchdog.interval if watchdog else None)
        if watchdog is not None and (lost := watchdog.lost()) is not None:
            raise _GroupLost(_Loss(*lost))
        if not ready or (first := _outcome(ready[0])) is None:
            continue
        if not isinstance(first, RayActorError):  # a peer's death may be behind it
            ray.wait(pending, num_returns=len(pending), timeout=GRACE_S)
        failures = {rank: err for rank, ref in enumerate(refs) if (err := _outcome_if_done(ref)) is not None}
        dead = [rank for rank, err in failures.items() if isinstance(err, RayActorError)]
        if dead:
            raise _GroupLost(_died(dead[0], failures[dead[0]]))
        rank = min(failures)
        raise _failure(rank, failures[rank]) from None
    return [ray.get(ref) for ref in refs]


# -- the render --------------------------------------------------------------------------------------------------


class RayReports(list):
    """The workers' reports by rank (a plain list to its callers), and what recovery did:
    ``restarts`` (how many times the workers were re-formed) and ``losses`` (one line per lost group)."""

    def __init__(self, reports: list[WorkerReport], restarts: int = 0, losses: list[str] | None = None):
        super().__init__(reports)
        self.restarts = restarts
        self.losses = list(losses or [])


def _shared_checkpoint(actors: list, job: JobConfig, timeout_s: float) -> tuple[int | None, bool]:
    """(the newest checkpoint step every worker has, or None; whether every worker's file of it is this job's)."""
    saved = _ask([actor.checkpoints.remote(job) for actor in actors], timeout_s, "ray.hang_timeout_s")
    shared = set.intersection(*(set(steps) for steps in saved))
    if not shared:
        return None, False
    newest = max(shared)  # the step render_worker's agreement picks
    return newest, all(steps[newest] for steps in saved)


def _form_group(
    job: JobConfig,
    world_size: int,
    bundle: dict[str, float],
    resume: bool,
    retry: bool,
    progress: bool,
    on_started: Callable[[list], None] | None,
    discard_checkpoints: bool,
    started_at: float,
    record: dict,
    asked: JobConfig,
) -> list[WorkerReport]:
    """Start ``world_size`` actors in a new placement group, run the render on them, stop them."""
    name = uuid.uuid4().hex[:8]
    group, actors = None, []
    lost = False
    try:
        group = placement_group([dict(bundle) for _ in range(world_size)], strategy=job.ray.placement)
        try:
            ray.get(group.ready(), timeout=job.ray.startup_timeout_s)
        except GetTimeoutError:
            raise VideogenError(
                f"ray: the cluster cannot place {world_size} workers of {bundle} ({job.ray.placement}) within "
                f"{job.ray.startup_timeout_s:g} s (ray.startup_timeout_s); it has {ray.cluster_resources()}"
            ) from None
        threads = job.parallel.threads_per_worker
        for rank in range(world_size):
            strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank)
            actors.append(
                RenderActor.options(
                    name=ACTOR_NAME.format(group=name, rank=rank),
                    num_cpus=bundle["CPU"],
                    num_gpus=bundle.get("GPU", 0),
                    scheduling_strategy=strategy,
                ).remote(rank, world_size, threads)
            )
        _ask([actor.pid.remote() for actor in actors], job.ray.startup_timeout_s, "ray.startup_timeout_s")
        if resume or retry:
            step, ours = _shared_checkpoint(actors, job, job.ray.hang_timeout_s)
            if step is None and not retry:
                raise VideogenError(f"--resume: the workers share no checkpoint in {checkpoint_dir(job)}")
            if retry:
                resume = step is not None and ours  # else start over: a newest shared step of another job
        addr, port = _ask([actors[0].address.remote()], job.ray.hang_timeout_s, "ray.hang_timeout_s")[0]
        refs = [
            a.run.remote(addr, port, job, resume, progress and r == 0, started_at, record, asked)
            for r, a in enumerate(actors)
        ]
        if on_started is not None:
            on_started(actors)
        reports = _wait_all(refs, actors, job.ray.hang_timeout_s)
        if discard_checkpoints:
            ray.wait([a.discard_checkpoints.remote(job) for a in actors], num_returns=world_size, timeout=60)
        return reports
    except _GroupLost:
        lost = True
        raise
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if group is not None:
            remove_placement_group(group)
        if lost and actors:  # the next group starts once these are gone (their CPUs, GPUs and files)
            ray.wait([a.pid.remote() for a in actors], num_returns=len(actors), timeout=STOP_WAIT_S)


def render_on_ray(
    job: JobConfig,
    world_size: int,
    resume: bool,
    progress: bool = True,
    on_started: Callable[[list], None] | None = None,
    started_at: float | None = None,
) -> RayReports:
    """Run :func:`render_worker` on ``world_size`` Ray actors; returns their reports by rank.

    The result is a list, with ``restarts`` (and ``losses``, one line each) telling how many times
    a lost group was re-formed. ``on_started(actors)`` is called each time a group's actors all exist
    and run (used to watch or stop them).
    """
    started_at = time.time() if started_at is None else started_at
    asked, recovery = job, with_recovery_checkpoints(job)
    discard = recovery is not job  # checkpoints the user did not ask for go once the video is written
    job = recovery
    if discard:
        check_target(checkpoint_dir(job), "output.checkpoint_dir", "folder")
    started_ray = _connect(job, world_size)
    try:
        gpus = _gpus_per_worker(job)
        _check_device(job, gpus)
        bundle = {"CPU": job.ray.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
        _check_placement(bundle, world_size, job.ray.placement)
        losses: list[str] = []
        while True:
            if losses:  # a lost node may have taken the room the workers need
                _check_placement(bundle, world_size, job.ray.placement)
            try:
                record = {"restarts": len(losses), "lost_workers": losses}
                if discard:
                    record["recovery_checkpoint_every"] = job.sampler.checkpoint_every
                reports = _form_group(
                    job,
                    world_size,
                    bundle,
                    resume,
                    bool(losses),
                    progress,
                    on_started,
                    discard,
                    started_at,
                    record,
                    asked,
                )
                return RayReports(reports, len(losses), losses)
            except _GroupLost as lost:
                if len(losses) >= job.ray.max_restarts:
                    raise lost.loss.error(len(losses)) from None
                line = f"worker rank {lost.loss.rank} {lost.loss.what}"
                losses.append(line)
                report = f"; Ray's report is in {lost.loss.log}" if lost.loss.log else ""
                print(
                    f"videogen: {line}; restarting the workers from their newest shared checkpoint "
                    f"(restart {len(losses)} of {job.ray.max_restarts}){report}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if started_ray:
            ray.shutdown()
