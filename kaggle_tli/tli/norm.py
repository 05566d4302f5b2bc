"""Re-estimate normalisation statistics after an injection.

Injected weights no longer fit the running mean/var their BatchNorm layers carry (or were left with), so a freshly
injected student evaluates at chance until training has refreshed them. A few forward passes in train mode, with
momentum=None (a cumulative average), refit them without touching any weight. This needs data, so it lives outside
`transfer()`; the pipeline (`kaggle_tli.iterate`) calls it with a few training batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def recalibrate_norms(model: nn.Module, batches: Iterable, *, max_batches: int = 8) -> int:
    """Refit every BatchNorm's running statistics on up to `max_batches` batches; returns how many were used.

    A batch is a tensor or a tuple/list whose first item is the input tensor; it is moved to the model's device and
    floating-point dtype. Weights, training flags and momenta are left as they were; if no batch comes, or a forward
    pass fails, the old statistics are put back. No more than `max_batches` are drawn from `batches`.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was_training = {m: m.training for m in model.modules()}
    saved = {m: (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms}
    weight = next(model.parameters())
    used, finished = 0, False
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches seen
            m.train()
        with torch.no_grad():  # statistics only: no graph to keep
            for batch in islice(batches, max_batches):
                model(_images(batch).to(weight.device, weight.dtype))
                used += 1
        finished = True
    finally:
        for m, flag in was_training.items():
            m.training = flag
        for m, (momentum, mean, var, count) in saved.items():
            m.momentum = momentum
            if used == 0 or not finished:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
    if used == 0:
        raise ValueError("recalibrate_norms got no batches: pass an iterable of input tensors (e.g. a DataLoader)")
    return used


def _images(batch) -> torch.Tensor:
    """The input tensor of a batch: the batch itself, or the first item of an (images, labels) pair."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"recalibrate_norms reads batches of image tensors or (images, labels) pairs, got "
                        f"{type(x).__name__}: wrap a loader of dicts so it yields the image tensor")
    return x
