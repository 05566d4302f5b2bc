"""Tracing: what the graph says about each layer, and that tracing leaves models exactly as they were."""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from kaggle_tli.tli import TraceError, trace, transfer


def _snapshot(model: nn.Module):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    return state, flags, grads


def _assert_unchanged(model: nn.Module, before) -> None:
    state, flags, grads = _snapshot(model)
    for key, value in before[0].items():
        assert torch.equal(state[key], value), f"tracing changed {key}"
    assert flags == before[1], "tracing changed training flags"
    assert grads == before[2], "tracing changed requires_grad"


class NeedsRealTensors(nn.Module):
    """A forward that reads a value (`.item()`), which the meta device cannot do: traced for real, then restored."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        scale = 1.0 + 0.0 * x.mean().item()
        return self.fc(x.mean((2, 3)) * scale)


class Traps(nn.Module):
    """Tuple + dict outputs, a frozen layer, tied weights, a module called twice, an unused layer, a residual add,
    a concatenation and a sigmoid gate."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.frozen = nn.Conv2d(8, 8, 3, padding=1)
        self.frozen.requires_grad_(False)
        self.shared = nn.Conv2d(8, 8, 1)  # called twice
        self.gate = nn.Conv2d(8, 8, 1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.proj = nn.Linear(16, 16, bias=False)
        self.out = nn.Linear(16, 16, bias=False)
        self.out.weight = self.proj.weight  # tied
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.frozen(x)  # add: block boundary
        y = self.shared(self.shared(x))
        x = torch.cat([x, self.mix(y * torch.sigmoid(self.gate(x)))], 1)  # mul, then cat
        z = self.out(torch.relu(self.proj(x.mean((2, 3)))))
        return z, {"features": x}


def test_trace_leaves_timm_model_bit_identical():
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5)
    model.train()
    model.blocks[0].requires_grad_(False)
    before = _snapshot(model)
    graph = trace(model, (3, 32, 32))
    assert graph.meta, "timm models should trace on the meta device"
    _assert_unchanged(model, before)


def test_real_trace_restores_batchnorm_statistics_and_flags():
    model = NeedsRealTensors().train()
    model.fc.requires_grad_(False)
    before = _snapshot(model)
    graph = trace(model, (3, 16, 16))
    assert not graph.meta, "a forward with .item() must fall back to a real trace"
    _assert_unchanged(model, before)
    assert [u.name for u in graph.units] == ["conv", "bn", "fc"]


def test_traps_are_handled():
    model = Traps()
    before = _snapshot(model)
    graph = trace(model, (3, 8, 8))
    _assert_unchanged(model, before)
    names = [u.name for u in graph.units]
    assert names[:4] == ["stem", "frozen", "shared", "gate"], names
    assert "frozen" in names, "frozen parameters must still be traced"
    assert names.count("shared") == 1, "a module called twice is one layer"
    assert "proj" in names and "out" not in names, "tied weights are one layer (the first owner)"
    assert graph.aliases == {"out.weight": "proj.weight"}
    assert graph.unreached == ["unused.weight", "unused.bias"]
    blocks = [([graph.units[i].name for i in b.units], b.merge) for b in graph.blocks]
    assert blocks == [
        (["stem", "frozen"], "AddBackward0"),
        (["shared", "gate"], "MulBackward0"),
        (["mix"], "CatBackward0"),
        (["proj"], ""),
    ], blocks
    assert [u.name for u in graph.units if u.gate] == ["gate"]
    stem = graph.units[0]
    assert stem.activation == "relu" and stem.kind == "conv"


class TwoGates(nn.Module):
    """A squeeze-excite gate (hard sigmoid, as in MobileNetV3) and a plain product of two paths."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)
        self.left = nn.Conv2d(8, 8, 1)
        self.right = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x * F.hardsigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        x = self.left(x) * self.right(x)  # two data paths multiplied: a merge
        return self.head(x.mean((2, 3)))


def test_the_layers_of_a_sigmoid_gate_are_marked_and_no_others():
    graph = trace(TwoGates(), (3, 8, 8))
    assert {u.name for u in graph.units if u.gate} == {"reduce", "expand"}, "left * right is no gate"
    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    gates = {u.name for u in trace(model, (3, 32, 32)).units if u.gate}
    se_convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".se." in n}
    assert se_convs and gates == se_convs, "exactly squeeze-excite's convolutions are gate layers"


def test_resnet_blocks_branches_and_activations():
    graph = trace(timm.create_model("resnet18", pretrained=False), (3, 32, 32))
    by_name = {u.name: u for u in graph.units}
    assert by_name["layer1.0.conv1"].activation == "relu"
    assert by_name["layer1.0.conv2"].activation == "none", "the add comes before the relu"
    assert by_name["layer2.0.conv1"].branch == 0 and by_name["layer2.0.downsample.0"].branch == 1
    assert by_name["layer2.0.conv1"].block == by_name["layer2.0.downsample.0"].block
    assert by_name["fc"].kind == "linear" and by_name["bn1"].kind == "norm"
    identity_blocks = [graph.units[b.zero_unit].name for b in graph.blocks if b.zero_unit is not None]
    assert identity_blocks == ["layer1.0.bn2", "layer1.1.bn2", "layer2.1.bn2", "layer3.1.bn2", "layer4.1.bn2"]


def test_kinds_depthwise_and_lone_parameters():
    vit = trace(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32), None)
    kinds = {u.name: u.kind for u in vit.units}
    assert kinds["cls_token"] == "other" and kinds["pos_embed"] == "other"
    assert kinds["blocks.0.attn.qkv"] == "linear" and kinds["blocks.0.norm1"] == "norm"
    assert vit.input_size == (3, 32, 32), "a ViT built for 32 px must be traced at 32 px"
    mnv3 = trace(timm.create_model("mobilenetv3_small_050", pretrained=False), (3, 32, 32))
    assert any(u.kind == "dwconv" for u in mnv3.units)
    assert any(u.activation == "hard_swish" for u in mnv3.units)


def test_forward_failure_names_the_size_and_the_fix():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(TraceError, match=r"\(1, 3, 224, 224\).*input_size="):
        trace(model)
    assert trace(model, (3, 2, 2)).units, "the right input_size traces"


def test_input_size_mistakes_get_the_fix():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    for wrong in (64, 64.0, (3, 32.0, 32), (3, True, 32)):
        with pytest.raises(TypeError, match=r"\(3, 224, 224\); got "):
            trace(model, wrong)
    assert trace(model, (np.int64(3), 32, 32)).input_size == (3, 32, 32)
    with pytest.raises(TraceError, match=r"excludes the batch dimension: pass input_size=\(3, 32, 32\)"):
        trace(model, (1, 3, 32, 32))
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    with pytest.raises(TraceError, match=r"own input size is input_size=\(3, 224, 224\)"):
        trace(vit, (3, 64, 64))


def test_transfer_names_the_model_that_failed_and_offers_teacher_input_size():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    resnet = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    with pytest.raises(TraceError, match=r"^teacher: VisionTransformer.*teacher_input_size="):
        transfer(vit, resnet, input_size=(3, 64, 64))
    with pytest.raises(TraceError, match=r"^student: VisionTransformer") as failure:
        transfer(resnet, vit, input_size=(3, 64, 64))
    assert "teacher_input_size" not in str(failure.value)
    assert transfer(vit, resnet, input_size=(3, 64, 64), teacher_input_size=(3, 224, 224)).coverage > 0


def test_model_without_parameters_is_refused():
    with pytest.raises(ValueError, match="no parameters"):
        trace(nn.ReLU())
