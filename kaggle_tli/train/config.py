"""Training configuration: `TrainConfig`, the validation `Metric`, seeding and the fold plan.

Steps are optimizer steps (one per `grad_accum` micro-batches); the config is a frozen dataclass saved as
run.json["config"], so a run can be continued or repeated with exactly its settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kaggle_tli.data import LOSSES
from kaggle_tli.train.metrics import Metric, resolve_metric

__all__ = ["Metric", "TrainConfig", "fold_plan", "resolve_metric", "seed_everything"]

_BOOL_FIELDS = ("ema", "eval_at_start", "pretrained", "progress")  # TrainConfig's on/off switches


@dataclass(frozen=True)
class TrainConfig:
    """Every training option; saved as run.json["config"]. Unknown keys are a TypeError.

    Steps are optimizer steps (one per `grad_accum` micro-batches). `batch_size` is per process.
    """

    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int | None = None  # default: 2 x batch_size
    lr: float = 1e-3
    optimizer: str = "adamw"  # "adamw" | "adam" (the paper: Adam at 3e-3) | "sgd"
    weight_decay: float = 0.01
    scheduler: str = "cosine"  # "cosine" (timm, warmup, stepped per optimizer step) | "constant"
    warmup_steps: int | None = None  # default: 5% of the planned steps, at most 500
    min_lr: float = 0.0
    grad_accum: int = 1
    clip_grad: float | None = None
    label_smoothing: float = 0.0
    amp: str | bool = "auto"  # "auto": fp16 + GradScaler on CUDA, off on CPU; True/"fp16"; False
    ema: bool = False  # timm ModelEmaV3 (with decay warm-up); the EMA weights are the ones evaluated
    ema_decay: float = 0.999
    early_stopping: int | None = None  # patience, in evaluations without improvement
    time_budget_s: float | None = None  # stop cleanly (evaluate, checkpoint) before this many seconds
    seed: int = 42
    num_workers: int | None = None  # data loader processes; None: one per CPU core (kaggle_tli.data.loading)
    fold: int = 0  # the primary fold: its last weights are model.safetensors, the teacher for TLI
    train_folds: tuple[int, ...] | str | None = None  # None: only `fold`; "all"; or a list of folds
    metric: str | Callable = "auto"  # "auto": the task's own (kaggle_tli.data.tasks); a metric name or a callable
    loss: str = "auto"  # "auto": the task's own; a regression may pick "huber" or "l1"
    mixup: float = 0.0  # timm Mixup alpha (0: off); single- and multi-label tasks only
    cutmix: float = 0.0  # timm CutMix alpha (0: off); single- and multi-label tasks only
    max_steps: int | None = None  # cap on optimizer steps per fold (tests, benchmarks, quick looks)
    eval_every_steps: int | None = None  # evaluate every N steps as well as at each epoch end
    eval_at_start: bool = False  # evaluate before the first step (the step-0 metric of a TLI student)
    checkpoint_every_steps: int | None = None  # state.pt every N steps as well as at each epoch end
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    channels_last: bool | str = "auto"  # NHWC layout; "auto": CNNs on CUDA, CNNs with depthwise convs on the CPU
    num_processes: int = 1  # > 1: data parallel through accelerate.notebook_launcher (gloo on CPU)
    pretrained: bool = False  # stage 1 only: start from the registry's pretrained weights
    progress: bool = True  # tqdm progress bars
    # after an injection (kaggle_tli.train.norms, groups, distill; defaults from docs/benchmarks.md)
    eval_norms: str = "precise"  # "precise": BatchNorm statistics refitted before each evaluation | "running"
    precise_images: int | None = None  # training images of the refit; default: an eighth of the fold, 128 to 512
    # log.csv's metric_running (the score with the running statistics, one more validation pass) in the first N
    # epochs, where the lag after an injection lives; None: at every evaluation, 0: never
    running_metric_epochs: int | None = 1
    # a third of the rate for what the teacher set: full-rate first steps shake a network that already works
    lr_transferred: float = 0.3  # learning-rate multiplier of tensors the teacher set (transfer.csv)
    lr_fresh: float = 1.0  # learning-rate multiplier of tensors left at init (every tensor of a run without TLI)
    freeze_transferred_steps: int = 0  # transferred tensors stay fixed (learning rate 0) for this many steps
    distill: float = 0.0  # weight of the distillation term against the teacher: loss = (1-a) task + a KD
    # softens both logits in the KD term (scaled by T^2, Hinton et al.); 4 led 2 at every measured step across families
    distill_temperature: float = 4.0
    distill_steps: int | None = None  # drop the distillation term after this many steps (None: never)

    def __post_init__(self) -> None:
        if isinstance(self.train_folds, list):
            object.__setattr__(self, "train_folds", tuple(self.train_folds))
        positive = ("epochs", "batch_size", "grad_accum", "num_processes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: must be a positive integer")
        for name in ("max_steps", "eval_every_steps", "checkpoint_every_steps", "early_stopping", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r}: must be a positive integer or None")
        for name in _BOOL_FIELDS:  # a string "False" is truthy: it would switch the option on
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"{name}={value!r}: must be True or False, not a {type(value).__name__} (a string such as "
                    f"'False' counts as true); pass {name}=False, or on the command line --set {name}=false"
                )
            object.__setattr__(self, name, bool(value))
        choices = {"optimizer": ("adamw", "adam", "sgd"), "scheduler": ("cosine", "constant"),
                   "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {allowed}")
        if self.channels_last not in ("auto", True, False):
            raise ValueError(f"channels_last={self.channels_last!r}: use 'auto' (models.layout decides), True or False")
        if self.amp not in ("auto", "fp16", True, False, "no", "off"):
            raise ValueError(f"amp={self.amp!r}: use 'auto', True / 'fp16', or False")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: must be > 0")
        if self.train_folds is not None and self.train_folds != "all" and not isinstance(self.train_folds, tuple):
            raise ValueError(f"train_folds={self.train_folds!r}: use None, 'all' or a list of fold numbers")
        self._check_after_injection()
        if self.metric != "auto":
            resolve_metric(self.metric)  # an unknown metric name fails here, before any run exists
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: choose one of {LOSSES}")
        for name in ("mixup", "cutmix"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: a Beta alpha >= 0 (0 switches it off; 0.2-1.0 usual)")

    def _check_after_injection(self) -> None:
        if self.eval_norms not in ("precise", "running"):
            raise ValueError(f"eval_norms={self.eval_norms!r}: use 'precise' (BatchNorm statistics refitted on "
                             "training images before each evaluation) or 'running' (the statistics training left)")
        for name in ("precise_images", "distill_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name}={value!r}: must be a positive integer or None")
        epochs = self.running_metric_epochs
        if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0):
            raise ValueError(f"running_metric_epochs={epochs!r}: an integer >= 0 (0: never), or None (every "
                             "evaluation)")
        steps = self.freeze_transferred_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"freeze_transferred_steps={steps!r}: must be an integer >= 0")
        for name in ("lr_transferred", "lr_fresh"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise ValueError(f"{name}={getattr(self, name)!r}: a learning-rate multiplier must be a number >= 0")
        if not (isinstance(self.distill, (int, float)) and 0.0 <= self.distill <= 1.0):
            raise ValueError(f"distill={self.distill!r}: the distillation weight must be in [0, 1] (0: off, 1: the "
                             "teacher's outputs only)")
        if not (isinstance(self.distill_temperature, (int, float)) and self.distill_temperature > 0):
            raise ValueError(f"distill_temperature={self.distill_temperature!r}: must be > 0")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TrainConfig:
        """`TrainConfig(**kwargs)` with a helpful TypeError for a misspelt option."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, valid, n=1, cutoff=0.6)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(f"unknown training option(s) {', '.join(hints)}; valid options: {', '.join(valid)}")
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, saved: dict) -> TrainConfig:
        """Rebuild a config saved in run.json; keys this version does not know are dropped."""
        valid = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in saved.items() if k in valid}
        for name in _BOOL_FIELDS:
            if isinstance(kwargs.get(name), str):  # `--set ema=False` of older versions, which trained as true
                warnings.warn(
                    f"the saved config has {name}={kwargs[name]!r}, a string, which trained as {name}="
                    f"{bool(kwargs[name])}; read as {bool(kwargs[name])} (what the run did). Pass {name}=... to "
                    "change it in a new run", UserWarning, stacklevel=2,
                )
                kwargs[name] = bool(kwargs[name])
        if isinstance(kwargs.get("metric"), str) and kwargs["metric"].startswith("callable:"):
            raise ValueError(
                f"the saved config used a custom metric function ({kwargs['metric']}); pass metric=<function> again"
            )
        return cls(**kwargs)

    def replace(self, **kwargs: Any) -> TrainConfig:
        """A copy with some options changed (unknown keys are a TypeError)."""
        return TrainConfig.from_kwargs(**{**self._fields(), **kwargs})

    def _fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict:
        """JSON-ready: a callable metric is recorded by name."""
        out = self._fields()
        if callable(out["metric"]):
            out["metric"] = f"callable:{getattr(out['metric'], '__module__', '?')}.{resolve_metric(out['metric']).name}"
        if isinstance(out["train_folds"], tuple):
            out["train_folds"] = list(out["train_folds"])
        return out

    def config_hash(self) -> str:
        """sha1 of the canonical JSON of the config (sorted keys): equal configs, equal hash."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha1(canonical.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# seeding and folds


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Data order and augmentation have their own seeds."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fold_plan(cfg: TrainConfig, n_folds: int) -> list[int]:
    """The folds to train, primary (`cfg.fold`, or the first listed) first."""
    if cfg.train_folds is None:
        folds = [cfg.fold]
    elif cfg.train_folds == "all":
        folds = list(range(n_folds))
    else:
        folds = [int(k) for k in cfg.train_folds]
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad or not folds:
        raise ValueError(f"fold(s) {bad or folds} out of range: the data has folds 0..{n_folds - 1}")
    primary = cfg.fold if cfg.fold in folds else folds[0]
    return [primary] + [k for k in dict.fromkeys(folds) if k != primary]


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def parse_config_value(raw: str) -> Any:
    """A config value written as text (`kaggle-tli ... --set KEY=VALUE`): a boolean word (any case: a string
    "False" would switch an option on), JSON (numbers, lists, null), or else the bare string (optimizer=adam)."""
    if raw.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[raw.strip().lower()]
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
