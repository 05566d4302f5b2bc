"""ComboInjection: W = lam * center_crop(T) + (1 - lam) * resize(T), for tensors of any rank."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from kaggle_tli.tli import rowstep
from kaggle_tli.tli.inject import ResizeCache, center_crop, combo_injection, combo_mix, mix, resize
from kaggle_tli.tli.rowstep import add_rows, resize_rows, shrink_last


def test_same_shape_is_an_exact_copy_for_any_lam():
    t = torch.randn(8, 4, 3, 3)
    for lam in (0.0, 0.75, 1.0):
        out, frac = combo_injection(t, torch.zeros_like(t), lam)
        assert torch.equal(out, t) and frac == 1.0, f"lam={lam} must copy a same-shaped tensor exactly"


def test_lam_one_is_pure_crop_and_lam_zero_is_pure_resize():
    t, like = torch.randn(8, 6), torch.randn(4, 10)
    crop, frac = combo_injection(t, like, 1.0)
    assert torch.equal(crop, center_crop(t, like)), "lam=1 must be the centre crop alone"
    assert frac == pytest.approx(4 * 6 / 40), "the crop takes 24 of the student's 40 elements"
    res, frac0 = combo_injection(t, like, 0.0)
    # the same weighted sums as resize's, in another order (the first axis's step is fused into the add)
    assert torch.allclose(res, resize(t, (4, 10)), rtol=1e-6, atol=1e-7), "lam=0 must be the resize alone"
    assert frac0 == 1.0
    mixed, _ = combo_injection(t, like, 0.75)
    assert torch.allclose(mixed, 0.75 * crop + 0.25 * res), "lam mixes the two parts linearly"


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_growth_and_shrink_along_every_axis(rank):
    base = (6,) * rank
    t = torch.randn(base)
    for axis, new in itertools.product(range(rank), (3, 9)):
        shape = list(base)
        shape[axis] = new
        like = torch.randn(shape)
        out, _ = combo_injection(t, like, 0.75)
        assert tuple(out.shape) == tuple(shape), f"axis {axis} -> {new}"
        assert torch.isfinite(out).all()
        crop = center_crop(t, like)
        if new < 6:  # shrinking: the crop is the teacher's centre
            idx = [slice(None)] * rank
            idx[axis] = slice(1, 4)
            assert torch.equal(crop, t[tuple(idx)]), f"shrink along axis {axis} keeps the central slice"
        else:  # growing: the teacher sits in the centre, the margin keeps the student's values
            idx = [slice(None)] * rank
            idx[axis] = slice(1, 7)
            assert torch.equal(crop[tuple(idx)], t), f"grow along axis {axis} pastes the teacher in the centre"
            margin = [slice(None)] * rank
            margin[axis] = slice(0, 1)
            assert torch.equal(crop[tuple(margin)], like[tuple(margin)]), "margin = the student's own init"


def test_resize_interpolates_and_keeps_corners():
    t = torch.tensor([0.0, 1.0, 2.0])
    assert torch.allclose(resize(t, (5,)), torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]))
    assert torch.allclose(resize(torch.arange(4.0), (2,)), torch.tensor([0.5, 2.5])), "shrinking averages areas"


def _resize_axis(x, dim, size):
    """Reference: one axis at a time, by explicit weights (linear with aligned corners, or area windows)."""
    n = x.shape[dim]
    if n == size:
        return x
    rows = []
    for j in range(size):
        if size > n:
            pos = j * (n - 1) / (size - 1) if size > 1 and n > 1 else 0.0
            lo = min(int(pos), max(n - 2, 0))
            frac = pos - lo
            row = x.select(dim, lo) * (1 - frac) + (x.select(dim, lo + 1) * frac if n > 1 else 0)
        else:
            start, end = (j * n) // size, -((-(j + 1) * n) // size)
            row = x.narrow(dim, start, end - start).mean(dim)
        rows.append(row)
    return torch.stack(rows, dim)


@pytest.mark.parametrize(("src", "dst"), [((6, 4, 3, 3), (9, 7, 1, 1)), ((6, 4, 3, 3), (3, 8, 5, 2)),
                                          ((1, 5, 2), (4, 2, 2)), ((7,), (3,)), ((4, 4, 4, 4), (2, 2, 2, 9)),
                                          ((5, 12, 1, 1), (5, 5, 1, 1))])
def test_resize_is_the_same_as_one_axis_at_a_time(src, dst):
    t = torch.randn(src, dtype=torch.float64)
    expected = t
    for dim, size in enumerate(dst):
        expected = _resize_axis(expected, dim, size)
    assert torch.allclose(resize(t, dst).double(), expected, atol=1e-5), "several axes at once = one at a time"


def test_resize_on_fan_in_preserves_a_linear_units_response_to_constant_input():
    # exact for weights that vary linearly along the fan-in (interpolation reproduces them and their mean)
    w = torch.randn(5, 1) + torch.randn(5, 1) * torch.linspace(-1, 1, 4)
    for width in (8, 2, 7):
        resized = resize(w, (5, width), fan_in_dims=(1,))
        assert torch.allclose(resized @ torch.ones(width), w @ torch.ones(4), atol=1e-5), f"width {width}"



def test_grown_kernel_with_zero_margin_computes_the_same_convolution():
    conv3 = torch.randn(8, 4, 3, 3)
    conv5_init = torch.randn(8, 4, 5, 5)
    conv5, frac = combo_injection(conv3, conv5_init, 1.0, fan_in_dims=(1, 2, 3), spatial_dims=(2, 3))
    assert frac == pytest.approx(9 / 25)
    assert torch.equal(conv5[:, :, 0], torch.zeros(8, 4, 5)), "the spatial margin of a grown kernel is zero"
    x = torch.randn(2, 4, 12, 12)
    assert torch.allclose(F.conv2d(x, conv3, padding=1), F.conv2d(x, conv5, padding=2), atol=1e-5)


def test_grown_channels_keep_student_init_in_the_margin():
    t = torch.randn(4, 4, 3, 3)
    like = torch.randn(8, 4, 3, 3)
    crop = center_crop(t, like, spatial_dims=(2, 3))
    assert torch.equal(crop[2:6], t) and torch.equal(crop[:2], like[:2]) and torch.equal(crop[6:], like[6:])


def test_mixing_weights_sum_to_one_and_mix_is_weighted_average():
    a, b = torch.ones(3), torch.full((3,), 3.0)
    assert torch.allclose(mix([a, b], [0.25, 0.75]), torch.full((3,), 2.5))
    assert mix([a], [1.0]) is a


def test_bad_lam_and_rank_mismatch_are_refused():
    with pytest.raises(ValueError, match="lam"):
        combo_injection(torch.ones(2), torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="ranks differ"):
        combo_injection(torch.ones(2, 2), torch.ones(3), 0.5)


def test_resize_cache_returns_what_resize_does_however_often_asked():
    # the first step (3x3 -> 1x1) is shared between targets; the fan-in scale must never be written into it
    cache, t = ResizeCache(), torch.randn(8, 6, 3, 3)
    for shape in [(8, 6, 1, 1), (5, 9, 1, 1), (8, 6, 1, 1), (16, 3, 1, 1), (5, 9, 1, 1), (8, 6, 2, 2)]:
        expected = resize(t, shape, fan_in_dims=(1, 2, 3))
        assert torch.allclose(cache.resize("t", t, shape, (1, 2, 3)), expected, atol=1e-6), shape
    small = ResizeCache(limit=2)
    for shape in [(4, 6, 1, 1), (5, 6, 1, 1), (6, 6, 1, 1)]:
        small.resize("t", t, shape, ())
    assert len(small.entries) == 2, "only the latest entries are kept"


@pytest.mark.parametrize(("shape", "size"), [((96, 80, 3), 33), ((64, 200), 70), ((300, 40), 7)])
def test_area_averaging_of_a_large_tensor_is_adaptive_pooling(shape, size):
    # large tensors are averaged by whole-tensor gathers instead of torch's pooling kernel: the same sums in the
    # same order, so the same floats; along the first and the last axis by a product with a sparse matrix (weights
    # 1/length), the same averages to float32 rounding
    x = torch.randn(shape)
    for dim in range(len(shape)):
        if shape[dim] <= size:
            continue
        before = x.shape[:dim].numel()
        after = x.numel() // before // shape[dim]
        target = [*shape[:dim], size, *shape[dim + 1:]]
        pooled = F.adaptive_avg_pool2d(x.reshape(1, before, shape[dim], after), (size, after)).reshape(target)
        if dim in (0, len(shape) - 1):
            assert torch.allclose(resize(x, target), pooled, rtol=1e-6, atol=1e-7), f"axis {dim}"
        else:
            assert torch.equal(resize(x, target), pooled), f"axis {dim}"


@pytest.mark.parametrize("lam", [0.0, 0.75, 1.0])
def test_combo_mix_is_the_weighted_sum_of_injections_and_keeps_covered_elements_free_of_the_init(lam):
    like = torch.randn(10, 6, 3, 3)
    teachers = [torch.randn(8, 9, 3, 3), torch.randn(12, 4, 1, 1), torch.randn(10, 6, 3, 3)]
    weights, geometry = [0.5, 0.3, 0.2], dict(fan_in_dims=(1, 2, 3), spatial_dims=(2, 3))
    expected = mix([combo_injection(t, like, lam, **geometry)[0] for t in teachers], weights)
    assert torch.allclose(combo_mix(teachers, like, weights, lam, **geometry), expected, atol=1e-6)
    in_place = like.clone()
    assert combo_mix(teachers, in_place, weights, lam, out=in_place, **geometry) is in_place
    assert torch.allclose(in_place, expected, atol=1e-6), "written into the student's own tensor"
    # where every source's crop reaches (rows 2-7, columns 2-3 here) the init plays no part, to the bit
    shifted = combo_mix(teachers, like + 1.0, weights, lam, **geometry)
    covered = (slice(2, 8), slice(2, 4))
    assert torch.equal(shifted[covered], combo_mix(teachers, like, weights, lam, **geometry)[covered])
    assert lam == 0.0 or not torch.equal(shifted, combo_mix(teachers, like, weights, lam, **geometry))


@pytest.mark.parametrize(("n", "m"), [(5, 9), (9, 5), (1, 4), (7, 3), (6, 3), (64, 144), (144, 64)])
def test_first_axis_step_added_in_place_is_resize_then_add(n, m):
    # the sparse product adds the resized rows straight into the destination: the same weighted sums as the
    # one-axis reference, to float32 rounding (sample positions are float32 arithmetic, as in torch's kernels)
    rest, out = torch.randn(n, 3, 2), torch.randn(m, 3, 2)
    expected = out.double() + 0.3 * _resize_axis(rest.double(), 0, m)
    add_rows(out, rest, 0.3)
    assert torch.allclose(out.double(), expected, atol=1e-5), f"{n} -> {m}"
    assert torch.allclose(resize_rows(rest, 0, m).double(), _resize_axis(rest.double(), 0, m), atol=1e-5)


def test_combo_mix_fused_and_plain_resize_paths_agree(monkeypatch):
    # off the CPU (or off float32) the first axis is interpolated and added as before: both paths, one result
    like = torch.randn(10, 6, 3, 3)
    teachers = [torch.randn(4, 9, 3, 3), torch.randn(16, 4, 1, 1), torch.randn(3, 6, 5, 5)]
    geometry = dict(fan_in_dims=(1, 2, 3), spatial_dims=(2, 3))
    fused = combo_mix(teachers, like, [0.5, 0.3, 0.2], 0.75, **geometry)
    monkeypatch.setattr(rowstep, "fits", lambda *tensors: False)
    assert torch.allclose(combo_mix(teachers, like, [0.5, 0.3, 0.2], 0.75, **geometry), fused, atol=1e-6)


@pytest.mark.parametrize("kernel", [3, 5, 4])
def test_cached_kernel_centre_is_the_centre_taps_bit_for_bit(kernel):
    # the cache takes a kernel's average and its centre tap from one pass over the teacher: the crop part must still
    # read exactly the teacher's own centre taps, whichever way the cache got them
    t = torch.randn(8, 6, kernel, kernel)
    c = (kernel - 1) // 2
    for warm in (True, False):
        cache = ResizeCache()
        if warm:  # the average computed first: the centre comes with it
            cache.unscaled("t", t, (5, 9, 1, 1))
        centre = cache.centre("t", t, (5, 9, 1, 1), (2, 3))
        assert torch.equal(centre, t[:, :, c:c + 1, c:c + 1]), f"warm={warm}"
    assert torch.allclose(ResizeCache().unscaled("t", t, (8, 6, 1, 1)), t.mean((2, 3), keepdim=True), atol=1e-6)


def test_first_axis_resize_ignores_whatever_its_fresh_memory_held(monkeypatch):
    # the product writes into an uninitialised tensor with beta=0: garbage there (here NaN) must not leak in
    monkeypatch.setattr(rowstep.torch, "empty", lambda *size, **kw: torch.full(size, float("nan"), **kw))
    rest = torch.randn(6, 5)
    assert torch.allclose(resize_rows(rest, 0, 11).double(), _resize_axis(rest.double(), 0, 11), atol=1e-5)
    assert torch.allclose(shrink_last(rest, 1, 2).double(), _resize_axis(rest.double(), 1, 2), atol=1e-6)
