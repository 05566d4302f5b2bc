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
