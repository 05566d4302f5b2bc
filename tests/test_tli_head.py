"""Refitting the classifier after an injection: a linear probe, kept only where it predicts clearly better."""

import pytest
import timm
import torch
from torch import nn

from kaggle_tli.tli import refit_head
from kaggle_tli.tli.head import classifier_of


def _net(classes: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, classes))


def _batches(n: int = 6, classes: int = 3, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Classes as well-separated clusters, so a probe on random ReLU features separates them."""
    centres = torch.randn(classes, 12, generator=torch.Generator().manual_seed(0)) * 3  # the same task for every seed
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, classes, (32,), generator=g)
        out.append(((centres[y] + torch.randn(32, 12, generator=g)).view(32, 3, 2, 2), y))
    return out


def _accuracy(net: nn.Module, batches) -> float:
    net.eval()
    with torch.no_grad():
        return float(torch.cat([net(x).argmax(1).eq(y) for x, y in batches]).float().mean())


def test_a_head_that_reads_the_wrong_features_is_refitted_at_its_old_size():
    net = _net()  # a random head on random features: separable ones, but the head does not know which is which
    batches = _batches()
    body = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("4.")}
    size = net[4].weight.norm().item()
    before = _accuracy(net, _batches(seed=2))
    net.train()

    result = refit_head(net, batches)

    assert result.refitted and result.images == 6 * 32
    assert result.accuracy_probe >= result.accuracy_before + 0.05, result
    assert result.accuracy_probe > 0.9, result
    after = _accuracy(net, _batches(seed=2))  # images neither the probe nor the check saw
    assert after > max(0.9, before + 0.2), (before, after)
    assert net[4].weight.norm().item() == pytest.approx(size, rel=1e-5), "the head keeps its size, only its direction"
    assert all(torch.equal(net.state_dict()[k], v) for k, v in body.items()), "only the classifier changes"
    assert "refitted" in str(result)


def test_a_head_that_already_fits_is_kept_bit_for_bit():
    net = _net()
    batches = _batches()
    assert refit_head(net, batches).refitted
    net.train()
    head = {k: v.clone() for k, v in net[4].state_dict().items()}

    again = refit_head(net, _batches(seed=3))

    assert not again.refitted and again.accuracy_before > 0.9, again
    assert all(torch.equal(net[4].state_dict()[k], v) for k, v in head.items())
    assert net.training and net[2].training, "training flags are restored"
    assert "kept" in str(again)


def test_max_batches_and_a_classifier_found_without_get_classifier():
    net = _net()
    assert classifier_of(net) is net[4]
    consumed = []

    def stream():
        for batch in _batches(n=10):
            consumed.append(1)
            yield batch

    assert refit_head(net, stream(), max_batches=4).images == 4 * 32
    assert len(consumed) == 4, "batches past max_batches are not drawn"


def test_bad_input_is_explained_and_changes_nothing():
    net = _net()
    weight = net[4].weight.clone()
    with pytest.raises(ValueError, match="no batches"):
        refit_head(net, [])
    with pytest.raises(ValueError, match="labelled batches"):
        refit_head(net, [x for x, _ in _batches()])
    with pytest.raises(ValueError, match="class indices"):
        refit_head(net, [(x, y + 5) for x, y in _batches()])  # labels beyond the head's 3 classes
    with pytest.raises(ValueError, match="class indices"):
        refit_head(net, [(x, y.float()) for x, y in _batches()])  # regression-style targets
    with pytest.raises(ValueError, match="no nn.Linear"):
        refit_head(nn.Sequential(nn.Conv2d(3, 2, 1)), _batches())
    with pytest.raises(ValueError, match="cannot tell which layer"):  # the last Linear does not give the output
        refit_head(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Unflatten(1, (2, 3))), _batches())
    headless = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match="none inside"):
        refit_head(headless, _batches())
    assert torch.equal(net[4].weight, weight)


def _conv_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def _colour_batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Class c: channel c is bright. Easy for a trained conv, impossible for one whose filters are all zero."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 3, (24,), generator=g)
        x = torch.randn(24, 3, 8, 8, generator=g) * 0.5
        x[torch.arange(24), y] += 2.0
        out.append((x, y))
    return out


def test_rank_teachers_with_data_puts_the_teacher_whose_features_carry_the_task_first():
    from kaggle_tli.tli import rank_teachers

    torch.manual_seed(0)
    trained, dead, student = _conv_net(), _conv_net(), _conv_net()
    opt = torch.optim.Adam(trained.parameters(), lr=0.05)
    for x, y in _colour_batches(30, seed=1):
        opt.zero_grad()
        nn.functional.cross_entropy(trained(x), y).backward()
        opt.step()
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.zero_()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    batches = iter(_colour_batches(20, seed=2))

    by_score = rank_teachers(student, {"dead": dead, "trained": trained}, input_size=(3, 8, 8))
    by_start = rank_teachers(student, {"dead": dead, "trained": trained}, input_size=(3, 8, 8), batches=batches,
                             max_batches=6, progress=False)

    assert list(by_score["tli_score"]) == [1.0, 1.0] and "start_accuracy" not in by_score, "same architecture"
    assert list(by_start["teacher"]) == ["trained", "dead"], by_start
    start = by_start.set_index("teacher")["start_accuracy"]
    assert start["trained"] > 0.9 and start["dead"] < 0.6, start
    assert len(list(batches)) == 14, "only max_batches are drawn, and every candidate sees the same ones"
    assert all(torch.equal(student.state_dict()[k], v) for k, v in before.items()), "the student is never changed"


def test_float32_batches_feed_a_bfloat16_model():
    net = _net().to(torch.bfloat16)
    result = refit_head(net, _batches())  # float32 images, as a DataLoader gives them
    assert result.images == 6 * 32 and net[4].weight.dtype == torch.bfloat16


def test_a_head_with_layers_around_its_final_linear_is_refitted_there():
    from kaggle_tli.models import create_model, register_edit, replace_head, unregister_arch

    register_edit("test_head_mlp_r10", base="resnet10t", edits=[replace_head("mlp")])
    try:
        model = create_model("test_head_mlp_r10", 3)
    finally:
        unregister_arch("test_head_mlp_r10")
    last = [m for m in model.get_classifier().modules() if isinstance(m, nn.Linear)][-1]
    assert classifier_of(model) is last
    result = refit_head(model, [(torch.randn(8, 3, 16, 16), torch.arange(8) % 3)] * 2)
    assert result.images == 16
