"""Memory layout: channels_last (NHWC) for the convolutional networks where it runs faster.

`channels_last="auto"` converts a CNN (over half of its parameters in 4-D convolution weights; a ViT's patch
embedding does not make it one) on CUDA, where cuDNN's tensor-core kernels work in NHWC under mixed precision, as
PyTorch's and NVIDIA's performance guides advise; on the CPU only a CNN with depthwise convolutions, the one kind
measured faster there (`kaggle-tli bench layout`; docs/benchmarks.md, "Input pipeline at Kaggle sizes"). The
layout changes how tensors lie in memory, never their values: weights are saved the same either way.
"""

from __future__ import annotations

import torch
from torch import nn


def is_cnn(model: nn.Module) -> bool:
    """Whether over half of `model`'s parameters are 4-D convolution weights."""
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    total = sum(p.numel() for p in model.parameters())
    return total > 0 and conv > total / 2


def has_depthwise(model: nn.Module) -> bool:
    """Whether `model` has a depthwise convolution (one group per input channel)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def wants_channels_last(model: nn.Module, setting: bool | str, device: torch.device | str) -> bool:
    """`setting` True / False as given; "auto": a CNN on CUDA, a CNN with depthwise convolutions on the CPU."""
    if setting != "auto":
        return bool(setting)
    if not is_cnn(model):
        return False
    return torch.device(device).type == "cuda" or has_depthwise(model)


def memory_format(model: nn.Module, setting: bool | str, device: torch.device | str) -> torch.memory_format:
    """Convert `model` in place to the layout `setting` asks for on `device`; returns the format its inputs take."""
    if wants_channels_last(model, setting, device):
        model.to(memory_format=torch.channels_last)
        return torch.channels_last
    return torch.preserve_format
