"""Growth keeps the function: a student that is the teacher grown wider and/or deeper computes what the teacher did,
in eval mode, on random input, with the teacher's norms and running statistics randomised (an untrained timm model
zeroes some norms and has statistics of 0 and 1, which would hide mistakes)."""

import pytest
import timm
import torch
from timm.models import efficientnet, mobilenetv3
from torch import nn

import kaggle_tli as kt
from kaggle_tli.tli import transfer
from kaggle_tli.tli.grow import grow


def _timm(name, **kw):
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kw)


def _effnet(width=1.0, depth=1.0):
    return lambda: efficientnet._gen_efficientnet("efficientnet_b0", channel_multiplier=width, depth_multiplier=depth,
                                                  num_classes=10)


VIT = {"img_size": 32}
# name -> (teacher, student, input size)
PAIRS = {
    "efficientnet_b0 -> b1": (_timm("efficientnet_b0"), _timm("efficientnet_b1"), 64),
    "efficientnet_b0 -> b2": (_timm("efficientnet_b0"), _timm("efficientnet_b2"), 64),
    "efficientnet_b0 widen 1.2": (_effnet(), _effnet(width=1.2), 64),
    "efficientnet_b0 deepen 1.3": (_effnet(), _effnet(depth=1.3), 64),
    "vit_tiny -> vit_small": (_timm("vit_tiny_patch16_224", **VIT), _timm("vit_small_patch16_224", **VIT), 32),
    "vit widen 2": (_timm("vit_tiny_patch16_224", **VIT),
                    _timm("vit_tiny_patch16_224", embed_dim=384, num_heads=6, **VIT), 32),
    "vit deepen": (_timm("vit_tiny_patch16_224", depth=4, **VIT), _timm("vit_tiny_patch16_224", depth=6, **VIT), 32),
    "deit_tiny -> deit_small": (_timm("deit_tiny_patch16_224", **VIT), _timm("deit_small_patch16_224", **VIT), 32),
    "resnet18 widen 1.5": (_timm("resnet18"), _timm("resnet18", channels=(96, 192, 384, 768)), 64),
    "resnet18 widen 1.25": (_timm("resnet18"), _timm("resnet18", channels=(80, 160, 320, 640)), 64),
    "resnet18 -> resnet34 widen 1.25": (_timm("resnet18"), _timm("resnet34", channels=(80, 160, 320, 640)), 64),
    "resnet50 widen 1.25": (_timm("resnet50", layers=(1, 1, 1, 1)),
                            _timm("resnet50", layers=(1, 2, 1, 1), channels=(80, 160, 320, 640)), 64),
    "mobilenetv3_large widen 1.25": (_timm("mobilenetv3_large_100"),
                                     lambda: mobilenetv3._gen_mobilenet_v3("mobilenetv3_large_100", 1.25,
                                                                          num_classes=10), 64),
    "mobilenetv2_050 -> 100": (_timm("mobilenetv2_050"), _timm("mobilenetv2_100"), 64),
    "convnext widen 2": (_timm("convnext_atto"), _timm("convnext_atto", dims=(80, 160, 320, 640)), 64),
    "convnext deepen": (_timm("convnext_atto"), _timm("convnext_atto", depths=(3, 3, 8, 3)), 64),
    "regnetx_002 deepen": (_timm("regnetx_002"), _timm("regnetx_002", depth=16), 64),
    "kt.widen(2) on convnext": (_timm("convnext_atto"), lambda: _edited("convnext_atto", kt.widen(2)), 64),
    "kt.deepen(1.5) on convnext": (_timm("convnext_atto"), lambda: _edited("convnext_atto", kt.deepen(1.5)), 64),
    "kt.widen(2) on vit": (_timm("vit_tiny_patch16_224", **VIT),
                           lambda: _edited("vit_tiny_patch16_224", kt.widen(2), **VIT), 32),
    "kt.deepen(1.5) on vit": (_timm("vit_tiny_patch16_224", **VIT),
                              lambda: _edited("vit_tiny_patch16_224", kt.deepen(1.5), **VIT), 32),
    "kt.widen(1.25) on resnet18": (_timm("resnet18"), lambda: _edited("resnet18", kt.widen(1.25)), 64),
    "kt.widen(1.2) on efficientnet_b0": (_timm("efficientnet_b0"), lambda: _edited("efficientnet_b0", kt.widen(1.2)),
                                         64),
    "kt.deepen(1.3) on efficientnet_b0": (_timm("efficientnet_b0"),
                                          lambda: _edited("efficientnet_b0", kt.deepen(1.3)), 64),
}


def _edited(base: str, edit, **kw) -> nn.Module:
    """The student a user gets from a registered edit."""
    name = f"grown_{base}_{edit.describe()}".replace(" ", "_").replace(".", "_").replace("(", "").replace(")", "")
    if not kt.models.is_arch(name):
        kt.register_edit(name, base=base, edits=[edit], kwargs=kw)
    return kt.create_model(name, num_classes=10)


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if "Norm" not in type(m).__name__:
                continue
            if getattr(m, "weight", None) is not None:
                m.weight.uniform_(0.5, 1.5, generator=g)
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0, 0.2, generator=g)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


@pytest.mark.parametrize("pair", list(PAIRS))
def test_a_grown_student_starts_as_the_teacher(pair):
    make_teacher, make_student, size = PAIRS[pair]
    torch.manual_seed(0)
    teacher = _randomised(make_teacher(), 5)
    torch.manual_seed(1)
    student = make_student().eval()
    report = transfer(teacher, student, input_size=(3, size, size))
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = teacher(x), student(x)
    error = ((got - want).norm() / want.norm()).item()
    assert error <= 1e-4, f"{pair}: relative logit error {error:.2e}\n{report.summary()}"
    assert report.settings["growth"] in ("silent", "duplicate"), report.settings
    fallbacks = [r["student"] for r in report.rows if r["method"] in ("combo", "mix") and not r["reason"]]
    assert not fallbacks, f"growth fell back to ComboInjection on matched layers: {fallbacks[:5]}"


def test_method_combo_keeps_the_papers_injection_everywhere():
    teacher, student = _randomised(_timm("resnet18")(), 5), _timm("resnet18", channels=(96, 192, 384, 768))()
    report = transfer(teacher, student, input_size=(3, 64, 64), method="combo")
    assert report.settings["growth"] == "none" and "grow" not in report.methods()
    with pytest.raises(ValueError, match="method="):
        transfer(teacher, student, method="net2net")


def test_a_layer_norm_widened_by_a_non_integer_ratio_says_it_is_approximate():
    teacher = _randomised(_timm("vit_tiny_patch16_224", **VIT)(), 5)
    student = _timm("vit_tiny_patch16_224", embed_dim=288, num_heads=3, **VIT)()  # 1.5x, head dim 96
    report = transfer(teacher, student, input_size=(3, 32, 32))
    reasons = {r["reason"] for r in report.rows if r["student"].endswith("norm1.weight")}
    assert any("approximately" in reason for reason in reasons), reasons


def test_duplicated_channels_split_their_fan_out_unevenly_but_exactly():
    teacher_w = torch.randn(4, 3)  # a linear 3 -> 4, read by the next layer
    grown_in = grow(teacher_w, torch.zeros(4, 6), mode="duplicate", fan_in_dim=1, jitter=0.2,
                    generator=torch.Generator().manual_seed(0)).values
    copies = grown_in[:, :3], grown_in[:, 3:]
    assert torch.allclose(copies[0] + copies[1], teacher_w, atol=1e-6), "the copies' shares sum to the teacher"
    assert not torch.allclose(copies[0], copies[1]), "jitter: the two copies do not get identical shares"
    silent = grow(teacher_w, torch.ones(6, 5), mode="silent", fan_in_dim=1)
    assert torch.equal(silent.values[:4, :3], teacher_w) and not silent.values[:, 3:].any(), "new inputs unread"
    assert torch.equal(silent.values[4:, :3], torch.ones(2, 3)), "new units keep the student's own init"
    assert silent.at_init == 6


def test_a_widened_group_norm_says_it_is_approximate():
    def net(width: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))

    report = transfer(net(16), net(32), input_size=(3, 16, 16))
    reasons = {r["reason"] for r in report.rows if r["kind"] == "norm"}
    assert reasons and all("GroupNorm" in reason and "approximately" in reason for reason in reasons), reasons
