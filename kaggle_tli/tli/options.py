"""Every option of a TLI transfer, with its default and its check.

This is the one record that `kt.transfer`, `iterate`, the CLI and the benchmarks read, so no copy of a default can
drift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

METHODS = ("auto", "combo")
EXTRA_BLOCKS = ("identity", "copy")


@dataclass(frozen=True)
class TransferOptions:
    """How `transfer` moves a teacher's weights into a student.

    lam: ComboInjection strength, `lam * center_crop + (1 - lam) * resize` (paper: 0.75).
    top_k: where a match is not sure (the student block and its teacher block differ in layer structure, e.g.
        across families), mix the k best-scoring teacher tensors with softmax weights over their scores (paper
        eq. 1-2). Sure matches always use the aligned tensor alone. 1 = never mix. The default won the convergence
        benchmark across families (docs/benchmarks.md).
    transfer_norm: False leaves normalisation layers at their init (the paper's BatchNorm ablation).
    transfer_head: also fill a classifier whose class count differs from the teacher's (default: leave it at init).
    extra_blocks: a deeper student's extra residual blocks are seeded from the teacher block they repeat; "identity"
        zeroes their residual branch's last layer so the student computes exactly what the teacher did (Net2Net's
        deeper transform), "copy" keeps the duplicate whole (the function changes).
    activation_scale: where the student has a smooth activation (SiLU, GELU, Mish, ...) in place of the teacher's
        ReLU, scale every norm's output by this and the classifier's weights by its inverse, so that each activation
        computes nearly the teacher's ReLU (activation.py); kept only if a probe batch shows the student closer to
        the teacher. 1 = off.
    method: "auto" grows a student that is the teacher grown wider and/or deeper so that it computes exactly what
        the teacher did (growth_align.py, grow.py), and uses ComboInjection elsewhere; "combo" is the paper's
        ComboInjection everywhere.
    growth_jitter: how unevenly duplicated channels split their fan-out (0 = evenly, as Net2Net; the copies then get
        equal gradients), drawn with `seed`. The function is kept either way.
    seed: seeds the growth's jitter, so a transfer is repeatable.
    head_as_source: across families, may the teacher's classifier seed the student's body layers (a 1x1 conv and a
        linear are the same map, so resnet18's fc can score well against efficientnet_b0's conv_head)? False makes
        the two classifiers match only each other: the body is seeded from the teacher's body alone, and the
        student's classifier from the teacher's classifier alone.
    """

    lam: float = 0.75
    top_k: int = 3
    transfer_norm: bool = True
    transfer_head: bool = False
    extra_blocks: str = "identity"
    activation_scale: float = 4.0
    method: str = "auto"
    growth_jitter: float = 0.1
    seed: int = 0
    head_as_source: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1] (0 = pure resize, 1 = pure centre crop), got {self.lam!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        for name in ("transfer_norm", "transfer_head", "head_as_source"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.extra_blocks not in EXTRA_BLOCKS:
            raise ValueError(f"extra_blocks={self.extra_blocks!r}: use 'identity' (keep the function) or 'copy'")
        if not isinstance(self.activation_scale, (int, float)) or not self.activation_scale >= 1.0:
            raise ValueError(f"activation_scale must be >= 1 (1 = off), got {self.activation_scale!r}")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: use 'auto' (growth that keeps the function where the student "
                             "is the teacher grown, ComboInjection elsewhere) or 'combo' (ComboInjection everywhere)")
        if not isinstance(self.growth_jitter, (int, float)) or not 0.0 <= self.growth_jitter < 1.0:
            raise ValueError(f"growth_jitter must be in [0, 1), got {self.growth_jitter!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_overrides(self, **overrides: Any) -> TransferOptions:
        """A copy with some options changed; an unknown name is refused with the list of known ones."""
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown TLI option(s) {', '.join(unknown)}; the options are {', '.join(self.names())}")
        return replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULTS = TransferOptions()
