"""``videogen train``: run a training job's stages in order and write a diffusers-format model folder.

The output folder is a model the renderer loads as it is (``model.path: OUT``): ``model_index.json``,
``tokenizer/`` and ``scheduler/`` are written first, then each stage replaces its components
(``vae/``; ``unet/`` + ``text_encoder/`` from the ``image`` and ``unet`` stages;
``trip_fusion/``; ``layout_prior/``) with its EMA weights at every checkpoint,
each folder atomically, in safetensors only. ``OUT/train/`` holds each stage's resumable state
(``<stage>.pt``, read with ``weights_only=True``) and its loss curve (``loss_<stage>.png``).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet3DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from videogen.config import ModelConfig
from videogen.errors import ConfigError
from videogen.io.atomic import atomic_folder, write_text_atomic
from videogen.models.layout_prior import LAYOUT_DIRNAME, LayoutPrior, find_layout_prior, load_layout_prior
from videogen.models.loader import component_dir, resolve_device
from videogen.models.object_layout import ObjectLayoutPrior
from videogen.models.tiny import MODEL_INDEX, tiny_scheduler
from videogen.models.trip_fusion import FUSION_DIRNAME, TemporalNoiseFusion, find_fusion_module, load_fusion
from videogen.train.architecture import new_text_encoder, new_unet, new_vae, word_tokenizer
from videogen.train.batches import ShapesSource
from videogen.train.config import TrainJob
from videogen.train.loop import SingleWorker, StageResult, StageRun, Workers, run_stage
from videogen.train.stages import LayoutObjective, TripObjective, UnetObjective, VaeObjective, latent_scale

SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class TrainResult:
    out: Path
    stages: dict[str, StageResult] = field(default_factory=dict)
    seconds: float = 0.0


def data_source(job: TrainJob):
    if job.data.source == "shapes":
        return ShapesSource(job.data)
    from videogen.train.video_source import VideoSource

    return VideoSource(job.data)


def save_component(module: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` a copy of ``module`` in ``dtype`` (safetensors) to ``folder``, atomically."""
    copy_ = copy.deepcopy(module).to(dtype)
    with atomic_folder(folder) as staging:
        copy_.save_pretrained(staging, safe_serialization=True)


def _init_path(job: TrainJob, component: str) -> Path | None:
    if job.model.init is None:
        return None
    return Path(component_dir(ModelConfig(path=job.model.init), component))


def _existing(out: Path, job: TrainJob, component: str) -> Path | None:
    """The folder to take a frozen ``component`` from: this run's output, else ``model.init``'s."""
    if (out / component / "config.json").is_file():
        return out / component
    return _init_path(job, component)


class JobRunner:
    """Builds and loads each stage's modules and runs the stages on one worker of ``workers``."""

    def __init__(self, job: TrainJob, workers: Workers, resume: bool, progress: bool, log: Callable[[str], None]):
        self.job, self.workers, self.resume, self.progress, self.log = job, workers, resume, progress, log
        self.out = Path(job.out).expanduser()
        self.device = resolve_device(job.device)
        self.dtype = SAVE_DTYPES[job.save_dtype]
        self.source = data_source(job)

    # -- the folder -------------------------------------------------------------------------------

    def prepare_folder(self) -> None:
        if self.workers.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for component in ("vae", "unet", "text_encoder"):  # a fine-tune's folder is a whole model from the start
            init = _init_path(self.job, component)
            if init is not None and not (self.out / component).is_dir():
                with atomic_folder(self.out / component) as staging:
                    shutil.copytree(init, staging, dirs_exist_ok=True)
        if not (self.out / "tokenizer").is_dir():
            init = _init_path(self.job, "tokenizer")
            if init is not None:
                tokenizer = CLIPTokenizer.from_pretrained(str(init))
            else:
                arch = self.job.model.architecture
                tokenizer = word_tokenizer(list(arch.words) or self.source.words(), arch.max_tokens)
            with atomic_folder(self.out / "tokenizer") as staging:
                tokenizer.save_pretrained(staging)
        if not (self.out / "scheduler").is_dir():
            init = _init_path(self.job, "scheduler")
            scheduler = DDIMScheduler.from_pretrained(str(init)) if init is not None else tiny_scheduler()
            prediction = self.job.model.resolved_prediction_type(dict(scheduler.config) if init else None)
            scheduler.register_to_config(prediction_type=prediction)
            with atomic_folder(self.out / "scheduler") as staging:
                scheduler.save_pretrained(staging)
        write_text_atomic(self.out / "model_index.json", json.dumps(MODEL_INDEX, indent=2) + "\n")

    def tokenizer(self) -> CLIPTokenizer:
        return CLIPTokenizer.from_pretrained(str(self.out / "tokenizer"))

    def scheduler(self) -> DDPMScheduler:
        return DDPMScheduler.from_pretrained(str(self.out / "scheduler"))

    def frozen(self, cls, component: str, needed_by: str):
        return self.written(cls, component, needed_by).requires_grad_(False)

    def written(self, cls, component: str, needed_by: str):
        """``component`` as an earlier stage of this job (or ``model.init``) left it."""
        folder = _existing(self.out, self.job, component)
        if folder is None:
            raise ConfigError(
                f"stages: the {needed_by} stage needs a trained {component}: "
                f"list its stage before {needed_by}, or set model.init to a model folder that has one"
            )
        kwargs = {"dtype": torch.float32} if cls is CLIPTextModel else {"torch_dtype": torch.float32}
        return cls.from_pretrained(str(folder), use_safetensors=True, **kwargs).to(self.device)

    def initial(self, cls, component: str, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """A stage's starting weights: ``model.init``'s component, else a new one (seeded: equal on every rank)."""
        folder = _init_path(self.job, component)
        if folder is not None:
            kwargs = {"dtype": torch.float32} if cls is CLIPTextModel else {"torch_dtype": torch.float32}
            return cls.from_pretrained(str(folder), use_safetensors=True, **kwargs).to(self.device)
        torch.manual_seed(self.job.seed)
        return build().to(self.device)

    # -- stages ----------------------------------------------------------------------------------

    def vae_stage(self) -> StageRun:
        vae = self.initial(AutoencoderKL, "vae", lambda: new_vae(self.job.model.architecture))
        probe = self.source.frame_batch(list(range(10**9, 10**9 + 64)))

        def save(ema: dict[str, torch.nn.Module]) -> None:
            ema["vae"].register_to_config(scaling_factor=latent_scale(ema["vae"], probe))
            save_component(ema["vae"], self.out / "vae", self.dtype)

        return StageRun("vae", {"vae": vae}, VaeObjective(vae, self.source, self.job), save)

    def image_stage(self) -> StageRun:
        return self.text_to_video_stage("image")

    def unet_stage(self) -> StageRun:
        return self.text_to_video_stage("unet")

    def text_to_video_stage(self, name: str) -> StageRun:
        """The ``image`` or ``unet`` stage. The ``unet`` stage continues from the ``image`` stage's
        weights when that stage is part of this job (it ran first)."""
        arch, section = self.job.model.architecture, getattr(self.job, name)
        tokenizer = self.tokenizer()
        if name == "unet" and "image" in self.job.stages:
            text_encoder = self.written(CLIPTextModel, "text_encoder", name)
            unet = self.written(UNet3DConditionModel, "unet", name)
        else:
            text_encoder = self.initial(CLIPTextModel, "text_encoder", lambda: new_text_encoder(arch, tokenizer))
            unet = self.initial(UNet3DConditionModel, "unet", lambda: new_unet(arch))
        for module in unet.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = section.dropout
        vae = self.frozen(AutoencoderKL, "vae", name)
        modules: dict[str, torch.nn.Module] = {"unet": unet}
        if section.train_text_encoder:
            modules["text_encoder"] = text_encoder
        else:
            text_encoder.requires_grad_(False)
        objective = UnetObjective(unet, text_encoder, tokenizer, vae, self.scheduler(), self.source, self.job, name)

        def save(ema: dict[str, torch.nn.Module]) -> None:
            save_component(ema["unet"], self.out / "unet", self.dtype)
            save_component(ema.get("text_encoder", text_encoder), self.out / "text_encoder", self.dtype)

        return StageRun(name, modules, objective, save)

    def trip_stage(self) -> StageRun:
        section = self.job.trip
        existing = find_fusion_module(self.job.model.init) if self.job.model.init else None
        if existing is not None:
            fusion = load_fusion(existing, device=self.device).requires_grad_(True)
        else:
            torch.manual_seed(self.job.seed)
            fusion = TemporalNoiseFusion(
                channels=self.job.model.architecture.latent_channels,
                dim=section.dim,
                heads=section.heads,
                patch_size=section.patch_size,
                frame_horizon=self.job.data.frames,
            ).to(self.device)
        objective = TripObjective(
            fusion,
            self.frozen(UNet3DConditionModel, "unet", "trip"),
            self.frozen(CLIPTextModel, "text_encoder", "trip"),
            self.tokenizer(),
            self.frozen(AutoencoderKL, "vae", "trip"),
            self.scheduler(),
            self.source,
            self.job,
        )

        def save(ema: dict[str, torch.nn.Module]) -> None:
            save_component(ema["fusion"], self.out / FUSION_DIRNAME, self.dtype)

        return StageRun("trip", {"fusion": fusion}, objective, save)

    def layout_stage(self) -> StageRun:
        """The text-to-layout prior on the frozen VAE and text encoder; a fine-tune continues ``model.init``'s
        own prior when it has one of ``layout.kind``."""
        section = self.job.layout
        tokenizer = self.tokenizer()
        text_encoder = self.frozen(CLIPTextModel, "text_encoder", "layout")
        vae = self.frozen(AutoencoderKL, "vae", "layout")
        wanted = ObjectLayoutPrior if section.kind == "objects" else LayoutPrior
        existing = find_layout_prior(self.job.model.init) if self.job.model.init else None
        prior = load_layout_prior(existing, self.device).requires_grad_(True) if existing is not None else None
        if prior is not None and not isinstance(prior, wanted):
            self.log(f"layout: {existing} is a {type(prior).__name__}; layout.kind {section.kind} trains a new one")
            prior = None
        if prior is None:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            shape = {
                "latent_channels": vae.config.latent_channels,
                "latent_height": self.job.data.height // factor,
                "latent_width": self.job.data.width // factor,
                "text_tokens": tokenizer.model_max_length,
                "text_dim": text_encoder.config.hidden_size,
                "hidden": section.hidden,
            }
            torch.manual_seed(self.job.seed)
            extra = {"slots": section.slots} if wanted is ObjectLayoutPrior else {"frequencies": section.frequencies}
            prior = wanted(**shape, **extra).to(self.device)
        objective = LayoutObjective(prior, text_encoder, tokenizer, vae, self.source, self.job)
        self.log(f"layout: its first step encodes a pool of {section.clips} clips with the VAE")

        def save(ema: dict[str, torch.nn.Module]) -> None:
            save_component(ema["prior"], self.out / LAYOUT_DIRNAME, self.dtype)

        return StageRun("layout", {"prior": prior}, objective, save)

    def run(self) -> TrainResult:
        started = time.perf_counter()
        self.prepare_folder()
        self.workers.barrier()  # the other ranks read OUT/tokenizer and OUT/scheduler that rank 0 wrote
        result = TrainResult(self.out)
        builders = {
            "vae": self.vae_stage,
            "image": self.image_stage,
            "unet": self.unet_stage,
            "trip": self.trip_stage,
            "layout": self.layout_stage,
        }
        for name in self.job.stages:
            section = getattr(self.job, name)
            result.stages[name] = run_stage(
                builders[name](),
                section,
                self.out,
                self.workers,
                resume=self.resume,
                seed=self.job.seed,
                log_every=self.job.log_every,
                progress=self.progress,
                log=self.log,
            )
            self.workers.barrier()  # the next stage reads the folders this one wrote on rank 0
        result.seconds = time.perf_counter() - started
        return result


def train_job(
    job: TrainJob,
    *,
    resume: bool = False,
    progress: bool = True,
    workers: Workers | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Run ``job`` on this process (or as one rank of ``workers``); returns the per-stage losses."""
    if job.threads:
        torch.set_num_threads(job.threads)
    return JobRunner(job, workers or SingleWorker(), resume, progress, log).run()
