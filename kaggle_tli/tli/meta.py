"""Shape-only kernels for the meta trace: ops whose meta version torch runs in Python get their outputs' shapes.

On the meta device torch computes no values, only shapes, but for convolutions, BatchNorm, LayerNorm, GroupNorm,
the hard and smooth activations, softmax, addmm, bmm, a mean and elementwise arithmetic it runs Python meta functions or
decompositions (a few dozen elementwise steps for a norm), and these made most of a trace's time. Their outputs'
shapes are known from the inputs. The mode sits below autograd, so the graph still records each op's own backward
node (NativeBatchNormBackward0, HardswishBackward0, AddmmBackward0, ...), which is all the trace reads; every other
op, and any op on a real tensor, runs as usual.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


class ShapeOnly(TorchDispatchMode):
    """Within the block, the ops of `_KERNELS` on meta tensors return empty outputs of the right shape."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kernel = _KERNELS.get(func)
        x = args[0] if args else None
        if kernel is None or not isinstance(x, torch.Tensor) or not x.is_meta:
            return func(*args, **kwargs)
        out = kernel(x, *args[1:], **kwargs)
        return func(*args, **kwargs) if out is NotImplemented else out


def meta_like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.empty_like(x, device="meta"), without its Python decomposition that works out the strides (tens of
    microseconds, on every norm, activation and swapped parameter): a dense tensor's strides are kept as they are
    (what empty_like does for one), anything else goes through empty_like."""
    dtype = dtype or x.dtype
    if x.is_contiguous():
        return torch.empty(x.shape, dtype=dtype, device="meta")
    if _dense(x.shape, x.stride()):  # a transposed or permuted view, a channels-last weight: the same layout
        return torch.empty_strided(x.shape, x.stride(), dtype=dtype, device="meta")
    return torch.empty_like(x, dtype=dtype, device="meta")


def _dense(shape, strides) -> bool:
    """Do the elements fill a block of memory without gaps or overlaps, in some order of the axes?"""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(strides, shape, strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """Norms keep their mean and 1/std in float32 for half inputs, as the decompositions do."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _normed(x: torch.Tensor, stats_shape) -> tuple:
    stats = [torch.empty(stats_shape, dtype=_stats_dtype(x), device="meta") for _ in range(2)]
    return (meta_like(x), *stats)


def _check(ok: bool, message: str) -> None:
    """The shape checks torch's own kernels make: an input of the wrong size must still fail the meta pass (the
    trace then says which input it tried and how to pass another)."""
    if not ok:
        raise RuntimeError(message)


def _batch_norm(x, weight, bias, running_mean, running_var, *rest, **kw):
    channels = x.shape[1] if x.dim() > 1 else 0
    sizes = {t.numel() for t in (weight, bias, running_mean, running_var) if t is not None}
    _check(sizes <= {channels}, f"batch_norm: expected {sorted(sizes)} channels, got input {tuple(x.shape)}")
    return _normed(x, (channels,))


def _layer_norm(x, normalized_shape, *rest, **kw):
    axis = x.dim() - len(normalized_shape)
    _check(axis >= 0 and tuple(x.shape[axis:]) == tuple(normalized_shape),
           f"layer_norm: normalized_shape {tuple(normalized_shape)} does not end input {tuple(x.shape)}")
    return _normed(x, (*x.shape[:axis], *([1] * len(normalized_shape))))


def _group_norm(x, weight, bias, n, c, hw, group, *rest, **kw):
    _check(x.dim() > 1 and x.shape[1] == c and c % group == 0 and (weight is None or weight.numel() == c),
           f"group_norm: {group} groups of {c} channels do not fit input {tuple(x.shape)}")
    return _normed(x, (n, group))


def _addmm(bias, m1, m2, *rest, **kw):
    _check(m1.dim() == 2 and m2.dim() == 2 and m1.shape[1] == m2.shape[0],
           f"mat1 and mat2 shapes cannot be multiplied ({m1.shape[0]}x{m1.shape[1]} and {m2.shape[0]}x{m2.shape[1]})")
    shape = (m1.shape[0], m2.shape[1])
    torch.broadcast_shapes(bias.shape, shape)  # raises as torch does where the bias does not fit
    dtype = torch.promote_types(torch.promote_types(m1.dtype, m2.dtype), bias.dtype)
    return torch.empty(shape, dtype=dtype, device="meta")


def _convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups, *rest, **kw):
    """A convolution's output shape, as torch's meta function computes it in Python (a third of some traces)."""
    if transposed:
        return NotImplemented
    spatial = x.dim() - 2
    _check(spatial >= 1 and weight.dim() == x.dim() and x.shape[1] == weight.shape[1] * groups,
           f"convolution: weight of shape {tuple(weight.shape)} with {groups} groups does not fit input "
           f"{tuple(x.shape)}")

    def at(values, i):
        return values[i] if len(values) > 1 else values[0]

    sizes = [(x.shape[2 + i] + 2 * at(padding, i) - at(dilation, i) * (weight.shape[2 + i] - 1) - 1) // at(stride, i)
             + 1 for i in range(spatial)]
    _check(all(n > 0 for n in sizes), f"convolution: input {tuple(x.shape)} is smaller than the kernel "
           f"{tuple(weight.shape[2:])}")
    return torch.empty((x.shape[0], weight.shape[0], *sizes), dtype=x.dtype, device="meta")


def _bmm(a, b, *rest, **kw):
    _check(a.dim() == 3 and b.dim() == 3 and a.shape[0] == b.shape[0] and a.shape[2] == b.shape[1],
           f"bmm: batch matrices {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")
    return torch.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=torch.promote_types(a.dtype, b.dtype),
                       device="meta")


def _softmax(x, dim, dtype=None, *rest, **kw):
    return meta_like(x, dtype)


def _mean(x, dim=None, keepdim=False, *, dtype=None):
    axes = {d % x.dim() for d in dim} if dim else set(range(x.dim()))
    shape = [1 if d in axes else n for d, n in enumerate(x.shape) if keepdim or d not in axes]
    return torch.empty(shape, dtype=dtype or x.dtype, device="meta")


def _binary(a, b, *rest, **kw):
    """An elementwise op of two operands: the output takes the layout of the operand that has its shape and dtype
    (a residual add, a gate's multiply); where neither has, torch's own meta function runs."""
    dtype = torch.result_type(a, b)
    shape = torch.broadcast_shapes(a.shape, b.shape) if isinstance(b, torch.Tensor) else a.shape
    for t in (a, b):
        if isinstance(t, torch.Tensor) and t.is_meta and t.shape == shape and t.dtype == dtype:
            return meta_like(t)
    return NotImplemented


def _same(x, *args, **kw):
    return meta_like(x)


def _in_place(x, *args, **kw):
    return x


_KERNELS = {
    aten.native_batch_norm.default: _batch_norm,
    aten.native_layer_norm.default: _layer_norm,
    aten.native_group_norm.default: _group_norm,  # (input, weight, bias, N, C, HxW, group, eps)
    aten.addmm.default: _addmm,
    aten.convolution.default: _convolution,
    aten._safe_softmax.default: _softmax,
    aten.mean.dim: _mean,
    aten.add.Tensor: _binary,
    aten.sub.Tensor: _binary,
    aten.mul.Tensor: _binary,
    aten.div.Tensor: _binary,
    aten.mul.Scalar: _binary,  # attention's q * scale
    aten.div.Scalar: _binary,
    aten.bmm.default: _bmm,
    **{getattr(aten, name).default: _same for name in (
        "hardswish", "hardsigmoid", "gelu", "silu", "mish", "sigmoid", "tanh", "relu", "hardtanh", "leaky_relu",
        "elu")},
    **{getattr(aten, f"{name}_").default: _in_place for name in (
        "hardswish", "hardsigmoid", "gelu", "silu", "mish", "sigmoid", "tanh", "relu", "hardtanh", "leaky_relu",
        "elu")},
}
