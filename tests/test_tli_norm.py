"""Refitting BatchNorm statistics after an injection."""

import pytest
import torch
from torch import nn

from kaggle_tli.tli import recalibrate_norms


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_statistics_fit_the_data_and_nothing_else_changes():
    net = _net()
    net(torch.zeros(2, 3, 8, 8))  # materialise the lazy layer
    net.eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    data = [torch.randn(16, 3, 8, 8) * 3 + 5 for _ in range(4)]
    assert recalibrate_norms(net, data, max_batches=3) == 3
    with torch.no_grad():
        features = torch.cat([net[0](x) for x in data[:3]])
    bn = net[1]
    assert torch.allclose(bn.running_mean, features.mean((0, 2, 3)), atol=1e-4), "cumulative mean over 3 batches"
    assert not net.training and bn.momentum == 0.1, "training flags and momentum restored"
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items()), "weights untouched"


def test_no_batches_or_a_failing_forward_keeps_the_old_statistics():
    net = _net()
    net(torch.zeros(2, 3, 8, 8))
    before = net[1].running_mean.clone().add_(1.5)
    net[1].running_mean.copy_(before)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_norms(net, [])
    assert torch.equal(net[1].running_mean, before)
    with pytest.raises(RuntimeError):
        recalibrate_norms(net, [torch.randn(4, 3, 8, 8), torch.randn(4, 5, 8, 8)])  # second batch: wrong channels
    assert torch.equal(net[1].running_mean, before), "a failure mid-way must not leave half-refitted statistics"


def test_draws_only_max_batches_from_a_generator():
    net = _net()
    net(torch.zeros(2, 3, 8, 8))
    stream = iter([torch.randn(4, 3, 8, 8) for _ in range(5)])
    assert recalibrate_norms(net, stream, max_batches=2) == 2
    assert len(list(stream)) == 3, "a batch drawn but not used would be lost to the caller"


def test_called_while_an_exception_is_being_handled_keeps_the_new_statistics():
    net = _net()
    net(torch.zeros(2, 3, 8, 8))
    x = torch.randn(16, 3, 8, 8) * 3 + 5
    try:
        raise KeyError("handled by the caller")
    except KeyError:
        recalibrate_norms(net, [x])
    with torch.no_grad():
        expected = net[0](x).mean((0, 2, 3))
    assert torch.allclose(net[1].running_mean, expected, atol=1e-4), "not undone by an unrelated, handled exception"


def test_batches_follow_the_model_dtype_and_dict_batches_are_explained():
    net = _net()
    net(torch.zeros(2, 3, 8, 8))
    net.to(torch.bfloat16)
    assert recalibrate_norms(net, [(torch.randn(4, 3, 8, 8), torch.zeros(4))]) == 1
    with pytest.raises(TypeError, match="image tensor"):
        recalibrate_norms(net, [{"image": torch.randn(4, 3, 8, 8)}])
