"""Does this model fit this data: the checks every stage runs before a run directory or ledger row exists.

Input size and channels, one logit per class, the spec's class count, the run's classes: each check says what
is wrong and how to fix it, so no stage has to import another stage to reach a check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from kaggle_tli.data import DataError, KaggleData, default_metric
from kaggle_tli.models import arch_spec, fixed_in_chans
from kaggle_tli.runs import Run
from kaggle_tli.train.config import TrainConfig
from kaggle_tli.train.metrics import check_metric, resolve_metric


def check_input_size(model: nn.Module, data: KaggleData, arch: str) -> None:
    """One dummy forward pass of a (2, C, H, W) zero batch the size of the data's images (eval mode,
    no grad), so that a model that cannot take them (a 224-px ViT given 32-px images), or that does not
    output one logit per class of the data, fails here, before a run directory or ledger row exists,
    rather than inside the training loop (or, for a wrong class count, not at all)."""
    _check_output_width(_dummy_forward(model, data, arch), data.num_classes, arch)


def _dummy_forward(model: nn.Module, data: KaggleData, arch: str) -> Any:
    shape = tuple(data.dataset(np.arange(1), train=False)[0][0].shape)  # what the valid pipeline makes
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros((2, *shape), device=device))
    except (AssertionError, RuntimeError, ValueError, IndexError, TypeError) as e:
        raise DataError(_input_size_message(arch, shape, e)) from e
    finally:
        model.train(was_training)


def _input_size_message(arch: str, shape: tuple[int, ...], error: Exception) -> str:
    c, h, w = shape
    size = h if h == w else (h, w)
    return (
        f"{arch!r} cannot take the data's {h}x{w} images with {c} channel(s): {type(error).__name__}: "
        f"{str(error).strip().rstrip('.') or '(no message)'}. Make the data the size the model expects (image_size= of "
        f"ImageCsvData / PixelCsvData, e.g. the model's pretrained_cfg input_size), or build the model for this "
        f"size: ViT-like models take img_size=, so register a variant and use its name, e.g. "
        f"kt.register_edit('{arch}_{h}px', base={arch!r}, edits=[], kwargs={{'img_size': {size}}})"
    )


def _check_output_width(out: Any, num_classes: int, arch: str) -> None:
    """The training loss indexes the logits by class: a model with fewer outputs than the data has classes
    fails mid-run, one with more trains silently on logits that mean nothing."""
    logits = out[0] if isinstance(out, (tuple, list)) else out  # multi-output models: logits first
    width = logits.shape[-1] if isinstance(logits, torch.Tensor) and logits.ndim == 2 else None
    if width == num_classes:
        return
    got = f"{width} values per image" if width is not None else (
        f"a {type(logits).__name__} of shape {tuple(getattr(logits, 'shape', ()))}")
    raise DataError(
        f"{arch!r} outputs {got}, but the data has {num_classes} classes: the model needs one logit per class. "
        f"Build it with num_classes={num_classes} (a registered factory must pass its num_classes argument to "
        "its classifier, e.g. timm.create_model(..., num_classes=num_classes))"
    )


def check_same_classes(run: Run, data: KaggleData) -> None:
    """A run is continued on data with its own classes, in its order."""
    if list(data.class_names) != list(run.class_names):
        raise DataError(
            f"the data's classes {data.class_names[:10]} differ from run {run.id!r}'s {run.class_names[:10]}"
        )


def check_data(data: Any) -> None:
    """Stages take a data object (`ImageCsvData`, `PixelCsvData`), not a path."""
    if not isinstance(data, KaggleData):
        raise TypeError(
            f"data must be a kaggle_tli data object, got {type(data).__name__}; "
            "make one with ImageCsvData(folder) or PixelCsvData(folder)"
        )


def check_spec_classes(spec: dict, data: KaggleData) -> None:
    """An architecture spec must have the data's number of classes and input channels."""
    if int(spec.get("num_classes", -1)) != data.num_classes:
        raise ValueError(
            f"the architecture spec has num_classes={spec.get('num_classes')} but the data has {data.num_classes} "
            "classes; make the spec with arch_spec(name, data.num_classes)"
        )
    if spec.get("in_chans") is not None and int(spec["in_chans"]) != data.in_chans:
        raise ValueError(
            f"the architecture spec has in_chans={spec['in_chans']} but the data has {data.in_chans}-channel images; "
            f"make the spec with arch_spec(name, data.num_classes, in_chans={data.in_chans}), or read the images "
            f"with {spec['in_chans']} channel(s) (ImageCsvData(..., in_chans={spec['in_chans']}))"
        )


def spec_for_data(arch: str, data: KaggleData) -> dict:
    """The spec of registered / timm `arch` for the data's classes and input channels."""
    check_arch_channels(arch, data.in_chans)
    return arch_spec(arch, data.num_classes, in_chans=data.in_chans)


def check_arch_channels(arch: str, in_chans: int, *, run_id: str | None = None) -> None:
    """An architecture registered for a number of input channels (a change_in_chans edit) must get that many: the
    stages build models for the data's channels (or, in iterate, the teacher run's), which would silently undo
    the edit."""
    fixed = fixed_in_chans(arch)
    if fixed is None or fixed == in_chans:
        return
    if run_id is None:
        source, fix = "the data", f"read the images with {fixed} channel(s) (ImageCsvData(..., in_chans={fixed}))"
    else:
        source = f"run {run_id!r}, whose task it continues,"
        fix = (f"start from a run trained on {fixed}-channel images (finetune on ImageCsvData(..., "
               f"in_chans={fixed})) instead of {run_id!r}")
    raise DataError(
        f"{arch!r} is registered for {fixed}-channel images (change_in_chans({fixed}) or in_chans={fixed} in its "
        f"registration) but {source} has {in_chans}-channel images. Either {fix}, or register {arch!r} without "
        f"change_in_chans({fixed}) so it takes the {in_chans} channels"
    )


def data_for_metric(data: KaggleData, metric: Any) -> KaggleData:
    """The data read as a regression when a regression metric is asked of numeric labels whose task was inferred
    (integer scores 0, 10, ..., 90 look like classes until the metric says they are numbers)."""
    if metric == "auto" or data.task == "regression" or data.task_given is not None:
        return data
    if not resolve_metric(metric).for_regression:
        return data
    try:
        return data.with_task("regression", reason=f"metric={metric!r} scores numbers; pass task='single_label' to "
                              "keep the labels as classes")
    except DataError:
        return data  # labels that are not numbers: check_metric refuses the metric with the fitting ones


def settle_metric(cfg: TrainConfig, data: KaggleData) -> TrainConfig:
    """The config with the task's own metric for "auto", once the metric has scored a fake prediction of the
    task's shape: a metric that does not fit is refused here, before a run directory exists."""
    if cfg.metric == "auto":
        cfg = cfg.replace(metric=default_metric(data.task, scores=data.target_info.sample_scores))
    check_metric(cfg.metric, data.task, data.num_classes)
    return cfg
def check_teacher(cfg: Any, extra: dict) -> None:
    """A run that distills needs the teacher iterate copies in; finetune and resume have none to give."""
    if cfg.distill and not extra.get("teacher"):
        raise ValueError(
            f"distill={cfg.distill} needs a teacher, and this run has none: distillation comes with "
            f"kt.iterate(prev_run, arch, distill={cfg.distill}) (the teacher is prev_run's weights, or "
            "distill_from=<run or weights file>). Pass distill=0 here"
        )


def check_teacher_classes(teacher: nn.Module, data: KaggleData, name: str) -> None:
    """The distillation teacher takes the data's images and outputs one logit per class of the student (the KD
    term compares them class by class)."""
    out = _dummy_forward(teacher, data, name)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    width = logits.shape[-1] if isinstance(logits, torch.Tensor) and logits.ndim == 2 else None
    if width != data.num_classes:
        raise DataError(
            f"the distillation teacher {name!r} outputs {width} values per image but the student has "
            f"{data.num_classes} classes: the KD term compares them class by class. Distill from a run trained on "
            "this competition's classes (distill_from=<run>), or pass distill=0"
        )
