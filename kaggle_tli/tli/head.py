"""Refit the classifier after an injection: a linear probe on a few labelled batches, kept only when it helps.

Across families the student's classifier reads features in a different order and scale than the teacher's did, so
a freshly injected student predicts at chance even when its features are good. resnet18 -> mobilenetv3_small_100 on
Fashion-MNIST: chance (0.08) straight after the injection; 0.58 with this probe on 512 training images, where the
same probe on a Kaiming-init or an iatransfer student reaches 0.36 or 0.35 (docs/benchmarks.md). Where the head
already fits (a deeper student, a same-family edit) the probe does no better on images it was not fitted on and
nothing changes.

Like `recalibrate_norms` this needs data, so it lives outside `transfer()`; `kaggle_tli.iterate` calls it after the
BatchNorm refit, whose statistics the probed features depend on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HeadRefit:
    """What `refit_head` measured and did. Accuracies are on the half of the images the probe was not fitted on."""

    refitted: bool
    accuracy_before: float  # the head as it was
    accuracy_probe: float  # a probe fitted on the other half
    images: int

    def __str__(self) -> str:
        verdict = "refitted" if self.refitted else "kept"
        return (f"classifier {verdict}: {self.accuracy_before:.3f} as injected, {self.accuracy_probe:.3f} with a "
                f"linear probe (held-out half of {self.images} images)")


def classifier_of(model: nn.Module) -> nn.Linear:
    """The final linear layer: the last `nn.Linear` in timm's `get_classifier()` (a plain Linear, or a head such as
    kaggle-tli's `replace_head("mlp")`), or for other models the last one registered. Checked against the model's
    output when features are collected."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
        if not linears:
            raise ValueError(f"{type(model).__name__}'s classifier is {type(head).__name__}, not an nn.Linear and "
                             "with none inside: nothing to refit; pass refit_head=False")
        return linears[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to refit; pass refit_head=False")
    return linears[-1]


def refit_head(model: nn.Module, batches: Iterable, *, max_batches: int = 8, l2: float = 1e-3,
               margin: float = 0.05) -> HeadRefit:
    """Fit the classifier to the model's own features on up to `max_batches` (images, class indices) batches.

    The probe (multinomial logistic regression, L2 `l2` on the weights, L-BFGS) is first fitted on half of the images
    and compared with the current head on the other half; only if it is better by `margin` is it refitted on all of
    them and written into the classifier. Either way nothing else in the model changes. The model is run in eval
    mode, so refit BatchNorm statistics first (`recalibrate_norms`).
    """
    head = classifier_of(model)
    x, y = _features(model, head, batches, max_batches)
    if y.dtype.is_floating_point or y.dim() != 1 or int(y.min()) < 0 or int(y.max()) >= head.out_features:
        raise ValueError(f"refit_head needs class indices in [0, {head.out_features}) as targets, one per image; "
                         f"got {tuple(y.shape)} {y.dtype}. Pass refit_head=False for other kinds of targets")
    fit, check = torch.arange(0, len(y), 2), torch.arange(1, len(y), 2)
    w0, b0 = head.weight.detach().float(), _bias(head)
    before = _accuracy(x[check], y[check], w0, b0)
    probe = _accuracy(x[check], y[check], *_logistic(x[fit], y[fit], w0, b0, l2))
    refitted = len(check) > 0 and probe >= before + margin
    if refitted:
        _write(head, *_logistic(x, y, w0, b0, l2))
    return HeadRefit(refitted, before, probe, len(y))


@torch.no_grad()
def _features(model: nn.Module, head: nn.Linear, batches: Iterable, max_batches: int) -> tuple[torch.Tensor, ...]:
    """The classifier's inputs (flattened, float32) and the labels, from the model in eval mode."""
    feats: list[torch.Tensor] = []
    head_out: list[torch.Size] = []
    labels = []

    def keep(_m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        feats.append(inputs[0].float().flatten(1))
        head_out.append(out.shape)

    hook = head.register_forward_hook(keep)
    was_training = {m: m.training for m in model.modules()}
    device = head.weight.device
    try:
        model.eval()
        for batch in islice(batches, max_batches):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("refit_head needs labelled batches: (images, class indices) pairs, e.g. a DataLoader")
            logits = model(batch[0].to(device, head.weight.dtype))
            if not isinstance(logits, torch.Tensor) or not head_out or logits.shape != head_out[-1]:
                raise ValueError(f"{type(model).__name__}'s output is not what its last nn.Linear gives, so refit_head "
                                 "cannot tell which layer is the classifier; pass refit_head=False")
            labels.append(torch.as_tensor(batch[1]).to(device))
    finally:
        hook.remove()
        for m, flag in was_training.items():
            m.training = flag
    if not labels:
        raise ValueError("refit_head got no batches: pass an iterable of (images, class indices), e.g. a DataLoader")
    return torch.cat(feats), torch.cat(labels)


def _bias(head: nn.Linear) -> torch.Tensor:
    if head.bias is None:
        return torch.zeros(head.out_features, device=head.weight.device)
    return head.bias.detach().float()


def _accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return float((x @ w.T + b).argmax(1).eq(y).float().mean()) if len(y) else 0.0


def _logistic(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, l2: float,
              iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax regression from the current head as a warm start; returns (weight, bias)."""
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()
def _write(head: nn.Linear, w: torch.Tensor, b: torch.Tensor) -> None:
    """Take the probe's direction at the head's current size (argmax, hence accuracy, is unchanged by the scale).

    A probe fitted to convergence is larger (x1.5 in the benchmark) and confident; training from it learnt 0.01-0.03
    slower over the first 50 steps, as if the backbone got less gradient. At the old size the curve after step 0
    follows the unprobed one. A zero head (some models initialise it so) keeps the probe's own size.
    """
    size = head.weight.float().norm()
    scale = size / w.norm() if size > 0 and w.norm() > 0 else torch.ones(())
    head.weight.copy_(w * scale)
    if head.bias is not None:
        head.bias.copy_(b * scale)
