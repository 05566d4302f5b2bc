"""Precise validation: BatchNorm statistics refitted on fixed training images before each evaluation.

After an injection (or any fast change of the weights) the running statistics lag the weights: evaluated in eval mode,
a network that is fine looks broken for a while, and the validation score, `model_best`, early stopping and the
ledger's CV all follow the lag instead of the weights. Before each evaluation the statistics are recomputed on the
same training images (un-augmented, never the validation fold) and *replace* the live model's, so the weights saved
with that evaluation carry the statistics it scored. Training in train mode never reads running statistics, so
training is unchanged; the refit reads no random number, so a resumed run stays exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from kaggle_tli.data import loader_options
from kaggle_tli.tli import recalibrate_norms
from kaggle_tli.train.config import TrainConfig

# default refit size: an eighth of the fold's training images, at least PRECISE_MIN and at most PRECISE_IMAGES. A
# refit costs a forward pass per image without a graph, about a fifth of a training step's work, so an eighth keeps
# it near 3% of an epoch; a few hundred images pin the statistics down (precise BN). The score's spread over which
# rows are drawn shrinks with the count (docs/benchmarks.md, "What it costs")
PRECISE_IMAGES = 512
PRECISE_MIN = 128
PRECISE_SHARE = 8
_ROWS_SEED = 20_250  # which training rows the refit uses: fixed, so every evaluation of a run sees the same ones


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` carries running statistics to refit (a model without BatchNorm skips precise validation)."""
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


def precise_count(cfg: TrainConfig, n_train: int) -> int:
    """How many training images the refit uses: `precise_images`, or the default (see PRECISE_SHARE) capped at the
    fold's size."""
    if cfg.precise_images is not None:
        return cfg.precise_images
    return min(n_train, max(PRECISE_MIN, min(PRECISE_IMAGES, n_train // PRECISE_SHARE)))


def check_precise(cfg: TrainConfig, data: Any, folds: list[int], model: nn.Module | None) -> None:
    """Refuse `eval_norms="precise"` when a fold has fewer training images than the refit asks for, before any run
    directory exists."""
    if cfg.eval_norms != "precise" or (model is not None and not has_batchnorm(model)):
        return
    for k in folds:
        n_train = len(data.fold_indices(k)[0])
        wanted = precise_count(cfg, n_train)
        if wanted > n_train or n_train < 2:
            raise ValueError(
                f"eval_norms='precise' refits BatchNorm statistics on {wanted} training images, but fold {k} has "
                f"{n_train} training image(s). Pass precise_images={max(n_train, 2)} or fewer (at least 2), or "
                "eval_norms='running' to evaluate with the statistics training left"
            )


# the refit's batches are the same at every evaluation (fixed rows, un-augmented): kept in memory after the first
# refit when they fit, so later refits cost the forward passes only, not a decode of every image again
KEEP_BYTES = 256 * 2**20


class PreciseBatches:
    """The fixed, un-augmented training batches of every refit of a fold: loaded once and kept in memory when they
    fit in KEEP_BYTES, else loaded again at each refit."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.kept: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.loader.batch_sampler)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.kept) if self.kept is not None else self._load()

    def _load(self) -> Iterator[torch.Tensor]:
        kept: list[torch.Tensor] | None = []
        size = 0
        for i, (x, _) in enumerate(self.loader):
            size += x.element_size() * x.nelement()
            if kept is not None and size <= KEEP_BYTES:
                kept.append(x)
            else:
                kept = None  # too large to keep: every refit loads the images again
            if i == len(self) - 1 and kept is not None:
                self.kept = kept  # before the last yield: a consumer may stop right after it
            yield x


def precise_loader(cfg: TrainConfig, data: Any, train_idx: np.ndarray, *, pin_memory: bool) -> PreciseBatches:
    """The fixed, un-augmented training batches of every refit of a fold (a lone last image joins the batch
    before it: BatchNorm in train mode cannot normalise a batch of one)."""
    count = precise_count(cfg, len(train_idx))
    rows = np.sort(np.random.default_rng(_ROWS_SEED).permutation(len(train_idx))[:count])
    dataset = data.dataset(np.asarray(train_idx)[rows], train=False)
    starts = list(range(0, count, cfg.batch_size))
    batches = [list(range(s, min(s + cfg.batch_size, count))) for s in starts]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] += batches.pop()
    # a private generator: starting the loader must not consume the global torch RNG (exact resume)
    return PreciseBatches(DataLoader(dataset, batch_sampler=batches, generator=torch.Generator(),
                                     **loader_options(cfg.num_workers, cuda=pin_memory)))


def refit_norms(model: nn.Module, batches: PreciseBatches) -> int:
    """Replace `model`'s BatchNorm running statistics with those of `batches`' images; returns the batches used.

    Other modules stay in eval mode during the refit, so dropout and stochastic depth draw nothing.
    """
    if not has_batchnorm(model):
        return 0
    return recalibrate_norms(model, batches, max_batches=len(batches))
