"""The ``train`` section of params.yaml as typed dataclasses, its resolution, and the DeepSpeed config.

A profile (``train``, ``train_spad``, ...) is read with the project's one loader
(:func:`ast_model.config.load_section`, strict). :func:`resolve_phases` then turns epochs into steps and
global batches into per-rank micro batches for a given world size, and :func:`check_config` collects every
problem that can be found before a process starts (batch sizes that don't divide, more ranks than
shards, fp16 without a GPU, ...). :func:`deepspeed_config` builds the DeepSpeed JSON, computing
``train_batch_size`` = micro batch x gradient accumulation x world size so it is never typed twice.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ast_model.config import ConfigError
from ast_model.data.phases import PatchPhase

# fp32: everything fp32. bf16 / fp16: DeepSpeed's whole-model half precision (the module's weights are
# bf16 / fp16 copies, fp32 masters in the optimizer; fp16 with dynamic loss scaling). autocast_bf16 /
# autocast_fp16: DeepSpeed's `torch_autocast` (fp32 weights, gradients and optimizer; matmuls and
# convolutions under torch.autocast; fp16 with a torch GradScaler), the official recipe's scheme.
Precision = Literal["fp32", "bf16", "fp16", "autocast_bf16", "autocast_fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "autocast_bf16", "autocast_fp16")


@dataclass(frozen=True)
class PhaseConfig:
    """One progressive-training phase (the official recipe's separate ``--retrain`` runs, here one run).

    Attributes:
        patch_size: square training crop side in pixels.
        batch_size: global batch = images per optimizer step over all ranks (the paper's ``--batch_size``,
            which DataParallel split over its GPUs). Each rank gets ``batch_size / (world x grad_accum)``.
        lr: peak learning rate of this phase (the official ``--lr_initial`` of that phase).
        steps: phase length in optimizer steps; or
        epochs: phase length in passes over the training set (converted with ceil(N / batch_size) steps
            per epoch, as the official loader with drop_last=False). Give exactly one of the two.
    """

    patch_size: int
    batch_size: int
    lr: float
    steps: int | None = None
    epochs: float | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The ``model`` section: the network every training profile builds unless it names its own.

    Attributes:
        name: a variant of :func:`ast_model.list_models` (``ast_t``, ``ast_b``).
        bottleneck_shift: shifted windows in the 8x8 bottleneck, as the official code builds the model at
            ``img_size >= 256``; false is its test-time configuration (built at 128). Further architecture
            keys go into a profile's ``model_overrides``.
    """

    name: str = "ast_t"
    bottleneck_shift: bool = False

    def problems(self, section: str = "model") -> list[str]:
        """An unknown variant (empty: fine)."""
        from ast_model import list_models

        if self.name not in list_models():
            return [f"{section}.name={self.name!r} is not a variant (known: {', '.join(list_models())})"]
        return []


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyper-parameters (official: betas 0.9/0.999, eps 1e-8, weight decay 0.02 on all params)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.02


@dataclass(frozen=True)
class ScheduleConfig:
    """Per-phase linear warm-up, then cosine down to ``min_lr`` by the end of the phase, every step.

    Give at most one of ``warmup_steps`` / ``warmup_epochs`` (official: 3 epochs, per phase).
    """

    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    min_lr: float = 1e-6


@dataclass(frozen=True)
class ValidationConfig:
    """Validation during training (PSNR / SSIM from :mod:`ast_model.eval.metrics`).

    Attributes:
        every_steps: validate every N optimizer steps (0: only at the end of each phase).
        split: shard split to validate on (``data/shards/<dataset>/<split>``); None: no validation.
        max_images: use only the first N images (None: all).
        crop: centre crop side in pixels (official AGAN / Dense-Haze validation), None: full images.
        y_channel: PSNR / SSIM on BT.601 Y instead of RGB (official SPAD / AGAN validation).
        sample_images: restorations logged as images per validation (from rank 0's share).
    """

    every_steps: int = 0
    split: str | None = "val"
    max_images: int | None = None
    crop: int | None = None
    y_channel: bool = False
    sample_images: int = 2


@dataclass(frozen=True)
class TrainConfig:
    """One training profile (a top-level ``train*`` section of params.yaml).

    Paths are not params (the DVC stage takes them as arguments; dvc.yaml names them): by default the
    stage reads ``data/shards/<dataset>/{train,<validation.split>}`` and writes ``models/<experiment>/``
    (final and best weights in the project checkpoint format, the resolved config, a summary) and
    ``checkpoints/<experiment>/`` (DeepSpeed checkpoints for resume; kept out of the DVC output so a
    crashed ``dvc repro`` can resume and DVC does not cache optimizer states).
    """

    phases: list[PhaseConfig]
    experiment: str = "default"
    dataset: str = "embedded_rain"
    model: str | None = None  # None: the `model` section's variant
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # charbonnier (official) or mse: see ast_model/train/loss.py for why short runs on sparse
    # degradations want mse.
    loss: Literal["charbonnier", "mse"] = "charbonnier"
    # true: zero the output projection so the untrained model is the identity (ast_model/train/init.py);
    # false: the official init (the output conv keeps PyTorch's default init).
    start_as_identity: bool = False
    loss_eps: float = 1e-3
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: Precision = "fp32"
    compile: bool = False  # torch.compile the network (AST.compile_network): one compilation per patch size
    zero_stage: Literal[0, 1, 2] = 0
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0 = off (official: no clipping)
    seed: int = 1234
    deterministic: bool = False
    num_workers: int = 0
    log_every: int = 10
    save_every: int = 100
    keep_checkpoints: int = 2
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples): for JSON files and MLflow params."""
        return _plain(dataclasses.asdict(self))

    def problems(self, section: str = "train") -> list[str]:
        """What can be checked without the data and the launch (empty: fine), each naming its key.

        :func:`check_config` adds the checks that need the world size, the shard index and the device.
        """
        problems = _phase_problems(self, world_size=1, train_samples=None, section=section, need_samples=False)
        for name in ("log_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{section}.{name} must be >= 1")
        if self.validation.every_steps < 0:
            problems.append(f"{section}.validation.every_steps must be >= 0")
        if self.grad_clip < 0:
            problems.append(f"{section}.grad_clip must be >= 0 (0 = off)")
        return problems


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ResolvedPhase:
    """A phase with every number the loop needs, for one world size.

    Attributes:
        index: 0-based phase number.
        patch_size: crop side.
        global_batch: images per optimizer step over all ranks.
        micro_batch: images per forward pass on one rank.
        steps: optimizer steps in this phase.
        lr: peak learning rate.
        warmup_steps: linear warm-up length at the start of the phase.
    """

    index: int
    patch_size: int
    global_batch: int
    micro_batch: int
    steps: int
    lr: float
    warmup_steps: int

    def patch_phase(self) -> PatchPhase:
        """The data side's view of this phase (patch, per-rank micro batch, steps)."""
        return PatchPhase(self.patch_size, self.micro_batch, self.steps)


def resolve_phases(cfg: TrainConfig, *, world_size: int, train_samples: int | None) -> list[ResolvedPhase]:
    """Turn the configured phases into steps and per-rank micro batches.

    Args:
        cfg: the training profile.
        world_size: total number of training processes.
        train_samples: size of the training set (needed only for ``epochs`` / ``warmup_epochs``).

    Returns:
        One :class:`ResolvedPhase` per configured phase.

    Raises:
        ConfigError: the first problem found; :func:`check_config` reports all of them.
    """
    problems = _phase_problems(cfg, world_size=world_size, train_samples=train_samples)
    if problems:
        raise ConfigError("; ".join(problems))
    out = []
    for i, st in enumerate(cfg.phases):
        per_epoch = math.ceil(train_samples / st.batch_size) if train_samples else 0
        if st.steps is not None:
            steps = st.steps
        else:
            assert st.epochs is not None  # _phase_problems: exactly one of steps / epochs
            steps = max(1, round(st.epochs * per_epoch))
        if cfg.schedule.warmup_epochs is not None:
            warm = round(cfg.schedule.warmup_epochs * per_epoch)
        else:
            warm = cfg.schedule.warmup_steps or 0
        out.append(
            ResolvedPhase(
                index=i,
                patch_size=st.patch_size,
                global_batch=st.batch_size,
                micro_batch=st.batch_size // (world_size * cfg.grad_accum),
                steps=steps,
                lr=st.lr,
                warmup_steps=min(warm, steps - 1),
            )
        )
    return out


def _phase_problems(
    cfg: TrainConfig, *, world_size: int, train_samples: int | None, section: str = "train", need_samples: bool = True
) -> list[str]:
    problems = []
    if not cfg.phases:
        problems.append(f"{section}.phases is empty: give at least one {{patch_size, batch_size, lr, steps|epochs}}")
    if cfg.grad_accum < 1:
        problems.append(f"{section}.grad_accum={cfg.grad_accum} must be >= 1")
    if cfg.schedule.warmup_steps is not None and cfg.schedule.warmup_epochs is not None:
        problems.append(f"{section}.schedule: give warmup_steps or warmup_epochs, not both")
    needs_samples = cfg.schedule.warmup_epochs is not None
    per_rank = world_size * max(cfg.grad_accum, 1)
    for i, st in enumerate(cfg.phases):
        key = f"{section}.phases[{i}]"
        if (st.steps is None) == (st.epochs is None):
            problems.append(f"{key}: give exactly one of steps / epochs")
        elif (st.steps is not None and st.steps < 1) or (st.epochs is not None and st.epochs <= 0):
            problems.append(f"{key}: the phase length must be positive")
        needs_samples |= st.epochs is not None
        if st.patch_size < 1 or st.batch_size < 1 or st.lr <= 0:
            problems.append(f"{key}: patch_size, batch_size and lr must be positive")
        elif st.batch_size % per_rank:
            problems.append(
                f"{key}.batch_size={st.batch_size} does not divide into world size {world_size} x "
                f"grad_accum {cfg.grad_accum} = {per_rank}: every rank needs a whole micro batch"
            )
    if need_samples and needs_samples and not train_samples:
        problems.append("epochs / warmup_epochs need the training-set size (the shard index was not found)")
    return problems


def check_config(
    cfg: TrainConfig,
    *,
    world_size: int,
    train_samples: int | None,
    num_shards: int | None,
    has_gpu: bool,
    shard_dir: str = "the training shard folder",
    pad_multiple: int | None = None,
    section: str = "train",
) -> list[str]:
    """Every problem that can be found before starting a process (empty list: good to go).

    Args:
        cfg: the training profile.
        world_size: nodes x processes per node.
        train_samples: training-set size from the shard index (None: index missing).
        num_shards: training shard count (None: index missing).
        shard_dir: named in the "more ranks than shards" message.
        has_gpu: whether CUDA is available on this node.
        pad_multiple: the model pads inputs to a multiple of this; patches that are not multiples waste
            compute on padding.
        section: the profile's section name (``train``, ``train_spad``, ...): every key is named under it.

    Returns:
        Human-readable problems, each naming the key.
    """
    problems = _phase_problems(cfg, world_size=world_size, train_samples=train_samples, section=section)
    if num_shards is not None:
        readers = world_size * max(cfg.num_workers, 1)
        if readers > num_shards:
            problems.append(
                f"{readers} readers (world size {world_size} x max(num_workers {cfg.num_workers}, 1)) but only "
                f"{num_shards} training shard(s) in {shard_dir}: a rank would get no "
                "data; write more shards or use fewer processes / workers"
            )
    if cfg.precision in ("fp16", "autocast_fp16") and not has_gpu:
        problems.append(
            f"{section}.precision={cfg.precision} needs a GPU (DeepSpeed's CPU accelerator has no fp16 here): "
            "use bf16, autocast_bf16 or fp32"
        )
    problems += [p for p in cfg.problems(section) if p not in problems]
    if pad_multiple:
        for i, st in enumerate(cfg.phases):
            if st.patch_size % pad_multiple:
                problems.append(
                    f"{section}.phases[{i}].patch_size={st.patch_size} is not a multiple of the model's pad multiple "
                    f"{pad_multiple} (16 x win_size): every step would train on padding"
                )
    return problems


def deepspeed_config(cfg: TrainConfig, *, micro_batch: int, world_size: int, lr: float) -> dict[str, Any]:
    """The DeepSpeed JSON config for this profile.

    Args:
        cfg: the training profile.
        micro_batch: per-rank batch of the first phase. DeepSpeed uses it only for bookkeeping; later
            phases feed their own micro batch (gradient scaling depends on ``grad_accum`` only).
        world_size: total processes.
        lr: initial learning rate written into the optimizer (the loop sets the LR every step).

    Returns:
        A dict for ``deepspeed.initialize(config=...)``.
    """
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": micro_batch * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": list(cfg.optimizer.betas),
                "eps": cfg.optimizer.eps,
                "weight_decay": cfg.optimizer.weight_decay,
                # Plain torch.optim.AdamW: FusedAdam would JIT-compile (~60 s on CPU, needs nvcc on GPU).
                "torch_adam": True,
                "adam_w_mode": True,
            },
        },
        "steps_per_print": 2**31 - 1,  # progress is ours (tqdm + MLflow); keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.precision == "fp16":
        # Dynamic loss scaling, as the official AMP GradScaler with default settings.
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    elif cfg.precision in ("autocast_bf16", "autocast_fp16"):
        # The engine runs forward under torch.autocast; weights, gradients and AdamW stay fp32. With fp16
        # DeepSpeed adds a torch.amp.GradScaler (ZeRO 0: the engine's, ZeRO 1/2: the optimizer's).
        # No "lower precision safe" modules: gradients are reduced across ranks in fp32, as DDP does under
        # the official AMP (listing Linear / Conv2d here would all-reduce their gradients in bf16 / fp16).
        ds["torch_autocast"] = {
            "enabled": True,
            "dtype": "bfloat16" if cfg.precision == "autocast_bf16" else "float16",
            "lower_precision_safe_modules": [],
        }
    return ds
