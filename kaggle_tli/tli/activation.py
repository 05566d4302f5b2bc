"""A student that swaps the teacher's ReLU for a smooth activation (SiLU, GELU, Mish, ...) starts near the teacher.

Copying the weights alone changes the function: every activation now computes silu(z) where the teacher computed
relu(z), and resnet18 -> resnet18-with-SiLU loses 2-3 points of accuracy at step 0 (docs/benchmarks.md). But such an
activation is a blurred ReLU, f(s * z) / s -> relu(z) as s grows (for SiLU the largest gap is 0.28 / s). In a network
that is positively homogeneous between its norms (convolutions without bias, pooling, additions, ReLU), multiplying
every norm's affine output by s multiplies every pre-activation by s; each activation then computes about
s * relu(z), and dividing the classifier's weights by s undoes the scale at the end. BatchNorm layers whose input is
scaled get their running statistics scaled with it, so eval mode agrees too.

Whether a model is homogeneous enough is not read off its graph (squeeze-excite gates, hard-swish or biased
convolutions break it): a forward pass on a random batch has to show the student's features closer to the teacher's
after the rescaling than before, or everything is put back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

# activations that tend to ReLU when sharpened: f(s * z) / s -> relu(z) as s -> infinity
SMOOTH_RELUS = frozenset({"silu", "gelu", "mish", "softplus", "elu"})
# activations that scaling leaves alone (positively homogeneous: f(s * z) = s * f(z)); any other one (sigmoid gates,
# hard-swish, relu6) is changed by it, and the rescaling is not even tried
HOMOGENEOUS = frozenset({"relu", "leaky_relu", "prelu", "none"})
_NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
_PROBE_BATCH = 2  # random images; BatchNorm's batch statistics need two, more only cost time (224 px, resnet50: 0.3 s)
_REQUIRED_GAIN = 0.75  # keep the rescaling only if it brings the student at least a quarter closer to the teacher


@torch.no_grad()
def sharpen_activations(teacher: nn.Module, student: nn.Module, teacher_head: nn.Module, student_head: nn.Module,
                        scale: float, input_size: tuple[int, ...]) -> tuple[str, list[tuple[nn.Module, str]]]:
    """Scale every norm's affine output by `scale` and the classifier's weights by 1 / `scale` (in place), when a
    probe shows that brings the student's features (the classifier's input) closer to the teacher's.

    Returns ("", the (module, tensor name) pairs changed) when applied, else (why not, []) and nothing is changed.
    """
    norms = [m for m in student.modules() if isinstance(m, _NORMS) and _affine(m)]
    if not norms:
        return "the student has no norm layer with an affine weight and bias to scale", []
    widths = [tuple(h.weight.shape[1:]) for h in (student_head, teacher_head)]
    if widths[0] != widths[1]:  # known before any forward pass
        return f"the classifiers' inputs differ in shape ({widths[0]} vs {widths[1]}): no way to check the scaling", []
    x = _probe_input(input_size)
    target, _ = _probe(teacher, teacher_head, [], x)
    before, rms_before = _probe(student, student_head, norms, x)
    if before.shape != target.shape:
        return f"the classifiers' inputs differ in shape ({tuple(before.shape)[1:]} vs {tuple(target.shape)[1:]})", []
    saved = {id(m): (m.weight.clone(), m.bias.clone()) for m in norms}
    head_weight = student_head.weight.clone()
    _scale_affine(norms, student_head, scale)
    after, rms_after = _probe(student, student_head, norms, x)
    gap_before, gap_after = _distance(before, target), _distance(after / scale, target)
    if not gap_after <= _REQUIRED_GAIN * gap_before:
        for m in norms:
            m.weight.copy_(saved[id(m)][0])
            m.bias.copy_(saved[id(m)][1])
        student_head.weight.copy_(head_weight)
        return (f"the student is not homogeneous enough: scaling moved its features from {gap_before:.3f} to "
                f"{gap_after:.3f} (relative distance to the teacher's)"), []
    changed = [(m, name) for m in norms for name in ("weight", "bias")] + [(student_head, "weight")]
    changed += [(m, name) for m in _scale_running_stats(norms, rms_before, rms_after, scale)
                for name in ("running_mean", "running_var")]
    return "", changed


def _affine(m: nn.Module) -> bool:
    return isinstance(getattr(m, "weight", None), Tensor) and isinstance(getattr(m, "bias", None), Tensor)


def _probe_input(input_size: tuple[int, ...]) -> Tensor:
    return torch.randn((_PROBE_BATCH, *input_size), generator=torch.Generator().manual_seed(0))


def _probe(model: nn.Module, head: nn.Module, norms: list[nn.Module], x: Tensor) -> tuple[Tensor, dict]:
    """The classifier's input on `x`, and the input RMS of each of `norms`. BatchNorm uses batch statistics (the
    random batch has nothing to do with the running ones), everything else runs as in eval mode (no dropout), and the
    model is left exactly as it was."""
    rms: dict[int, float] = {}
    features: list[Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: rms.__setitem__(id(mod), _rms(args[0]))) for m in norms]
    hooks.append(head.register_forward_pre_hook(lambda mod, args: features.append(args[0].detach().clone())))
    try:
        with _batch_statistics(model):
            first = next(model.parameters())
            model(x.to(device=first.device, dtype=first.dtype))  # teacher and student may live on other devices
    finally:
        for h in hooks:
            h.remove()
    return features[0].flatten(1).double().cpu(), rms


@contextmanager
def _batch_statistics(model: nn.Module) -> Iterator[None]:
    """Eval mode, except that BatchNorm normalises with the batch's own statistics and records none of them: no
    buffer is written, so the model's tensors (and their version counters) stay exactly as they were."""
    training = {m: m.training for m in model.modules()}
    tracking = {m: m.track_running_stats for m in model.modules() if isinstance(m, _BatchNorm)}
    try:
        model.eval()
        for m in tracking:
            m.train()
            m.track_running_stats = False
        yield
    finally:
        for m, flag in training.items():
            m.training = flag
        for m, flag in tracking.items():
            m.track_running_stats = flag


def _rms(t: Tensor) -> float:
    return t.detach().double().pow(2).mean().sqrt().item()


def _distance(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _scale_affine(norms: list[nn.Module], head: nn.Module, scale: float) -> None:
    for m in norms:
        m.weight.mul_(scale)
        m.bias.mul_(scale)
    head.weight.div_(scale)


def _scale_running_stats(norms: list[nn.Module], rms_before: dict, rms_after: dict, scale: float) -> list[nn.Module]:
    """A BatchNorm whose input grew by about `scale` (all but those fed by the input alone) gets its running
    statistics scaled the same way, so eval mode sees the rescaled network as train mode does; returns those."""
    scaled = []
    for m in norms:
        if not (isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None):
            continue
        grew = rms_after.get(id(m), 0.0) / max(rms_before.get(id(m), 0.0), 1e-12)
        if grew > math.sqrt(scale):
            m.running_mean.mul_(scale)
            m.running_var.mul_(scale * scale)
            scaled.append(m)
    return scaled
