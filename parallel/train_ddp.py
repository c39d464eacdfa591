"""Data-parallel training (DDP) of a ``videogen train`` job: on Ray Train workers, or on local processes.

Every worker runs the same :func:`videogen.train.run.train_job` with a :class:`DdpWorkers`. Worker
``r`` of ``W`` trains on the global sample indices ``(step * W + r) * B + j`` (``j < B``, see
:func:`videogen.train.batches.step_indices`), and ``DistributedDataParallel`` all-reduces the
gradients of each step to their mean over the workers:

    g = (1 / W) * sum_r grad (1 / B) * sum_j L(i_rj) = grad (1 / (W B)) * sum_i L(i),

the gradient of the mean loss over the ``W * B`` samples that one worker with batch ``W * B`` sees
at the same step. Gradient clipping, AdamW and the EMA then act on identical gradients on every
rank, so ``W`` workers with batch ``B`` produce the weights one worker produces with batch ``W * B``,
up to the order of floating-point additions (the DDP oracle in ``tests/test_train_ddp.py``). Dropout
(``unet.dropout``) is the exception: its masks come from each rank's global generator, reseeded per
``(seed, step, rank)``, so with dropout the two runs agree in distribution, not sample by sample.

Only rank 0 writes the output folder; the other ranks wait at :meth:`DdpWorkers.barrier` before
they read what it wrote. The output folder must therefore be one folder that every worker sees: on
one machine any absolute path is; across machines it must be on a shared filesystem (NFS, a
mounted bucket), and so must ``data.videos`` and ``model.init``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from parallel.launch import WorkerError, find_free_port, run_local
from videogen.errors import VideogenError
from videogen.train.config import TrainJob
from videogen.train.run import TrainResult, train_job

__all__ = ["DdpWorkers", "train_local", "train_on_ray"]

RUN_NAME = "ddp"  # Ray Train's run folder, under OUT/train/ray


class DdpWorkers:
    """The training loop's ``Workers`` over the initialised default process group: all ranks are data-parallel.

    * ``wrap(module)``: ``DistributedDataParallel(module)``, on the module's CUDA device when it has
      one (``device_ids``), else on the CPU. DDP registers gradient hooks only on the parameters that
      require gradients, so an objective holding frozen submodules (the VAE of the UNet stage, the
      UNet of the TRIP stage) is wrapped whole: their weights are broadcast from rank 0 once, like
      every parameter and buffer, and never all-reduced. Every trainable parameter must receive a
      gradient each step (DDP's ``find_unused_parameters`` stays off). A module with no trainable
      parameter is returned unwrapped.
    * ``average(x)``: ``(1 / W) * sum_r x_r``, an all-reduce in float64.
    * ``barrier()``: ``dist.barrier()``.
    """

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DdpWorkers needs an initialised torch.distributed default process group")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self._nccl = dist.get_backend() == "nccl"

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self._nccl else torch.device("cpu")

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        trainable = [p for p in module.parameters() if p.requires_grad]
        if not trainable:
            return module
        device = trainable[0].device
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            return DistributedDataParallel(module, device_ids=[index], output_device=index)
        return DistributedDataParallel(module)

    def average(self, value: float) -> float:
        total = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(total)
        return float(total.item()) / self.world_size

    def barrier(self) -> None:
        if self._nccl:
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _worker_job(job: TrainJob) -> TrainJob:
    """``job`` with its paths made absolute (Ray Train moves each worker into a working directory of its
    own) and ``device: auto`` pinned to the CPU when the workers hold no GPU."""
    data = dataclasses.replace(
        job.data,
        videos=[_absolute(v) for v in job.data.videos],
        manifest=_absolute(job.data.manifest) if job.data.manifest else None,
    )
    model = dataclasses.replace(job.model, init=_absolute(job.model.init) if job.model.init else None)
    device = "cpu" if job.device == "auto" and not job.ray.use_gpu else job.device
    return dataclasses.replace(job, out=_absolute(job.out), device=device, data=data, model=model)


def _train_rank(job: TrainJob, resume: bool, progress: bool) -> TrainResult | None:
    """One rank's training, over the process group this process has joined; rank 0 returns the result."""
    workers = DdpWorkers()
    main = workers.rank == 0
    result = train_job(job, resume=resume, progress=progress and main, workers=workers, log=print if main else _quiet)
    return result if main else None


def _quiet(_: str) -> None:
    pass


def _failure(rank: int, error: BaseException, out: str) -> VideogenError:
    """One line for a failed rank: a user error keeps its type and message, anything else is named."""
    if isinstance(error, VideogenError):
        return type(error)(str(error))
    text = str(error).strip()
    first = text.splitlines()[0] if text else "no message"
    return VideogenError(
        f"training worker rank {rank} failed: {type(error).__name__}: {first}; "
        f"checkpoints written so far in {out}/train are kept for --resume"
    )


def _root_cause(failures: dict[int, BaseException]) -> int:
    """The rank to blame: a user error first, then any other exception, then a lost collective
    (a rank whose peer failed first); the lowest rank among equals."""

    def priority(rank: int) -> tuple[int, int]:
        error = failures[rank]
        if isinstance(error, VideogenError):
            return (0, rank)
        if isinstance(error, dist.DistError) or "Connection closed by peer" in str(error):
            return (2, rank)
        return (1, rank)

    return min(failures, key=priority)


def train_local(job: TrainJob, world_size: int, *, resume: bool = False, timeout_s: float = 600.0) -> TrainResult:
    """Train ``job`` data-parallel on ``world_size`` processes of this machine, started by
    :func:`parallel.launch.run_local`, without Ray: gloo on the CPU, NCCL with ``ray.use_gpu`` (or a
    CUDA ``device``) on one GPU per process. ``batch_size`` is per process, as on Ray.

    Returns rank 0's :class:`TrainResult`; a failed rank raises one :class:`VideogenError`.
    """
    job = _worker_job(job)
    backend = "nccl" if job.device != "cpu" and torch.cuda.is_available() else "gloo"
    try:
        results = run_local(
            _local_rank, world_size, job, resume, num_threads=job.threads or 1, backend=backend, timeout_s=timeout_s
        )
    except WorkerError as error:
        cause = error.__cause__ if error.__cause__ is not None else RuntimeError(str(error).splitlines()[0])
        raise _failure(error.rank if error.rank is not None else 0, cause, job.out) from None
    return results[0]


def _local_rank(rank: int, world_size: int, job: TrainJob, resume: bool) -> TrainResult | None:
    return _train_rank(job, resume, progress=False)


def _ray_rank(config: dict) -> TrainResult | None:
    """Ray Train's per-worker function; Ray Train has formed the process group already."""
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.set_verbosity_error()  # as the CLI does in its own process
    diffusers.utils.logging.set_verbosity_error()
    job: TrainJob = config["job"]
    if job.ray.use_gpu:
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())
    try:
        return _train_rank(job, config["resume"], config["progress"])
    except VideogenError as error:
        # A user error is one line (videogen.errors); Ray Train logs the traceback of what is raised here.
        raise type(error)(str(error)) from None


def train_on_ray(job: TrainJob, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``job`` data-parallel on ``job.ray.workers`` Ray Train workers; returns rank 0's result.

    A ``ray.train.torch.TorchTrainer`` starts the workers (``cpus_per_worker`` CPUs each, and one GPU
    each with ``use_gpu``), joins them in a process group (gloo on CPU, NCCL on GPU) and runs
    :func:`videogen.train.run.train_job` with :class:`DdpWorkers` on each; rank 0's
    :class:`TrainResult` is the run's return value. ``ray.address`` (or ``RAY_ADDRESS``) joins that
    cluster; when both are unset a private Ray instance bound to 127.0.0.1 is started and shut down
    afterwards (:func:`_connect`). Ray Train's own run folder is ``OUT/train/ray``. A worker failure is
    not retried: it raises one :class:`VideogenError` naming the failed rank (a user error raised on a
    worker keeps its type and message).

    ``job.out`` must be visible to every worker at the same path; across machines that means a
    shared filesystem (see the module docstring).
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    job = _worker_job(job)
    workers = job.ray.workers
    started = _connect(job)
    try:
        trainer = TorchTrainer(
            _ray_rank,
            train_loop_config={"job": job, "resume": resume, "progress": progress},
            torch_config=TorchConfig(backend="nccl" if job.ray.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=workers,
                use_gpu=job.ray.use_gpu,
                resources_per_worker={"CPU": job.ray.cpus_per_worker},
            ),
            run_config=RunConfig(
                name=RUN_NAME,
                storage_path=str(Path(job.out) / "train" / "ray"),
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        try:
            result = trainer.fit()
        except TrainingFailedError as error:
            raise _training_error(error, job.out) from None
        if not isinstance(result.return_value, TrainResult):
            raise VideogenError(f"Ray Train finished without rank 0's training result (got {result.return_value!r})")
        return result.return_value
    finally:
        if started:
            ray.shutdown()


def _connect(job: TrainJob) -> bool:
    """Join ``ray.address`` (or ``RAY_ADDRESS``) as renders do, or start a private local instance; True
    when this call started or joined Ray (and so must shut it down).

    The local instance is the renders' one (bound to 127.0.0.1, enough CPUs for every worker) plus its
    dashboard, on a free port of 127.0.0.1: Ray Train's controller watches its actors through the
    State API that the dashboard serves, and warns every few seconds without it.
    """
    import ray

    from parallel import ray_runtime

    if ray.is_initialized():
        return False
    if job.ray.address or os.environ.get("RAY_ADDRESS"):
        return ray_runtime._connect(job, job.ray.workers)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=max(os.cpu_count() or 1, job.ray.workers * max(job.ray.cpus_per_worker, 1)),
        namespace=ray_runtime.NAMESPACE,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=find_free_port(),
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
    )
    return True


def _training_error(error: Exception, out: str) -> VideogenError:
    """One :class:`VideogenError` for Ray Train's ``WorkerGroupError`` / ``ControllerError``."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank = _root_cause(failures)
        return _failure(rank, failures[rank], out)
    cause = getattr(error, "controller_failure", error)
    text = str(cause).strip()
    first = text.splitlines()[0] if text else type(cause).__name__
    return VideogenError(f"Ray Train's controller failed: {type(cause).__name__}: {first}")
