"""transfer(): identity on the same architecture, function kept for a deeper student, coverage across families,
and the options (top-k, norm, head, several teachers); tli_score and friends."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from kaggle_tli.tli import (
    match,
    rank_teachers,
    recalibrate_norms,
    similarity_matrix,
    tli_score,
    trace,
    transfer,
)
from kaggle_tli.tli.match import match_graphs

# family -> (timm name, extra kwargs, input size); small inputs keep this fast
FAMILIES = {
    "resnet": ("resnet18", {}, 32),
    "resnext": ("resnext26ts", {}, 32),
    "regnet": ("regnetx_002", {}, 32),
    "efficientnet": ("efficientnet_b0", {}, 32),
    "mobilenetv2": ("mobilenetv2_050", {}, 32),
    "mobilenetv3": ("mobilenetv3_small_050", {}, 32),
    "mnasnet": ("mnasnet_050", {}, 32),
    "ghostnet": ("ghostnet_050", {}, 32),
    "convnext": ("convnext_atto", {}, 32),
    "vit": ("vit_tiny_patch16_224", {"img_size": 32}, 32),
    "deit": ("deit_tiny_patch16_224", {"img_size": 32}, 32),
    "mixer": ("mixer_s16_224", {"img_size": 32}, 32),
    "densenet": ("densenet121", {}, 32),
    "repvgg": ("repvgg_a0", {}, 32),
    "levit": ("levit_128s", {}, 224),
}


def _model(name: str, seed: int, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=kw.pop("num_classes", 7), **kw).eval()
    with torch.no_grad():  # non-trivial statistics and no zero-initialised heads: the copy must be complete
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _logits(model: nn.Module, size: int) -> torch.Tensor:
    torch.manual_seed(123)
    with torch.no_grad():
        return model(torch.randn(2, 3, size, size))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_architecture_gives_the_teachers_logits(family):
    name, kw, size = FAMILIES[family]
    teacher, student = _model(name, 0, **kw), _model(name, 1, **kw)
    assert not torch.allclose(_logits(teacher, size), _logits(student, size)), "seeds must differ to prove anything"
    report = transfer(teacher, student)
    assert torch.allclose(_logits(teacher, size), _logits(student, size), atol=1e-6), f"{name}: logits differ"
    assert report.score == 1.0 and report.coverage == 1.0, report.summary()
    assert set(report.methods()) == {"copy"}, report.methods()


def test_deeper_resnet_keeps_the_teachers_function():
    teacher, student = _model("resnet18", 0), _model("resnet34", 1)
    report = transfer(teacher, student)
    assert torch.allclose(_logits(teacher, 64), _logits(student, 64), atol=1e-5), "resnet34 must start as resnet18"
    assert report.coverage == 1.0, "extra blocks are seeded from their neighbours, not left at init"
    zeroed = {r["student"] for r in report.rows if r["method"] == "zeroed"}
    assert zeroed and all(".bn2." in k for k in zeroed), "only the residual's last norm is zeroed"


def test_deeper_transformer_repeats_whole_blocks_attention_from_attention():
    # a transformer block is two merge-delimited halves (attention, MLP): an extra block must repeat the pair
    teacher = _model("vit_tiny_patch16_224", 0, img_size=32, depth=4)
    student = _model("vit_tiny_patch16_224", 1, img_size=32, depth=6)
    report = transfer(teacher, student)
    assert torch.allclose(_logits(teacher, 32), _logits(student, 32), atol=1e-5), "extra blocks start as identities"
    for row in report.rows:
        if row["method"] != "init":
            assert row["method"] in ("copy", "zeroed"), row
            assert row["student"].split(".")[-2:] == row["source"].split(".")[-2:], row  # qkv from qkv, fc1 from fc1
    zeroed = {r["student"] for r in report.rows if r["method"] == "zeroed"}
    layers = sorted(k.split(".", 2)[2].rsplit(".", 1)[0] for k in zeroed)
    assert layers == ["attn.proj"] * 4 + ["mlp.fc2"] * 4, "two extra blocks, each an identity: weight and bias zeroed"


def test_deeper_se_resnet_keeps_the_teachers_function():
    # the gate's multiply ends the block that holds the layers and the add after it holds none
    teacher, student = _model("seresnet18", 0), _model("seresnet34", 1)
    report = transfer(teacher, student)
    assert torch.allclose(_logits(teacher, 32), _logits(student, 32), atol=1e-5), "extra blocks start as identities"
    zeroed = {r["student"] for r in report.rows if r["method"] == "zeroed"}
    assert zeroed and all(".bn2." in k for k in zeroed), zeroed


def test_a_block_split_by_a_gate_is_not_mistaken_for_an_extra_block():
    # regnety adds squeeze-excite to regnetx: every block becomes two halves with the same depth, nothing extra
    report = transfer(_model("regnetx_002", 0), _model("regnety_002", 1))
    assert not [r["student"] for r in report.rows if r["method"] == "zeroed"]


def test_block_alignment_repeats_single_blocks_and_pairs():
    from kaggle_tli.tli.match import align_blocks

    single = align_blocks(np.array([[1.0, 0.2], [0.2, 1.0], [0.2, 1.0]]))
    assert [(b.teacher, b.repeat) for b in single] == [(0, False), (1, False), (1, True)]
    a, m = [1.0, 0.1, 0.1], [0.1, 1.0, 0.1]  # attention-like and MLP-like halves of two teacher blocks (0/1, 2/3)
    gain = np.array([[x, y, x, y] for x, y in zip(a, m, strict=True)] * 2)[[0, 1, 0, 1, 0, 1]][:, :4]
    pairs = align_blocks(gain)
    assert [(b.teacher, b.repeat) for b in pairs] == [(0, False), (1, False), (2, False), (3, False), (2, True),
                                                      (3, True)]


CROSS_PAIRS = [
    ("spnasnet_100", "mnasnet_100"),
    ("tf_efficientnet_b0", "mnasnet_100"),
    ("resnet18", "resnet34"),
    ("resnet50", "resnet101"),
    ("efficientnet_b0", "efficientnet_b2"),
    ("mobilenetv3_large_100", "mobilenetv3_small_100"),
    ("convnext_tiny", "convnext_small"),
    ("vit_tiny_patch16_224", "vit_small_patch16_224"),
    ("resnet18", "efficientnet_b0"),
    ("regnety_004", "mobilenetv2_100"),
]


@pytest.mark.parametrize("teacher_name,student_name", CROSS_PAIRS)
def test_across_architectures_coverage_and_a_finite_student(teacher_name, student_name):
    kw = {"img_size": 64} if "vit" in teacher_name else {}
    teacher, student = _model(teacher_name, 0, **kw), _model(student_name, 1, **kw)
    report = transfer(teacher, student)
    assert report.coverage + report.blended > 0.5, report.summary()
    assert torch.isfinite(_logits(student, 64)).all(), "the injected student must produce finite logits"
    rows = report.to_frame()
    params = {n for n, _ in student.named_parameters()}
    assert params <= set(rows["student"]), "every student parameter has a row"


def test_top_k_mixes_uncertain_matches_with_softmax_weights_that_sum_to_one():
    teacher = _model("resnet18", 0)
    aligned = {r["student"]: r["source"] for r in transfer(teacher, _model("mobilenetv3_small_050", 1), top_k=1).rows}
    report = transfer(teacher, _model("mobilenetv3_small_050", 1), top_k=3)
    mixed = [r for r in report.rows if r["method"] == "mix"]
    assert mixed, "top_k=3 must mix several sources across families"
    for r in mixed:
        weights = [float(w) for w in r["weights"].split("+")]
        assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-3, r
        assert r["source"].split("+")[0] == aligned[r["student"]], "the aligned source comes first"


def test_top_k_keeps_sure_matches_alone():
    """Blocks with the same layer structure are sure matches (paper 3.3): no mixing, the function survives."""
    teacher, student = _model("resnet18", 0), _model("resnet34", 1)
    report = transfer(teacher, student, top_k=3)
    assert "mix" not in report.methods()
    assert torch.allclose(_logits(teacher, 64), _logits(student, 64), atol=1e-5)


def test_a_norm_left_without_a_partner_takes_the_norm_after_its_layers_teacher_layer(monkeypatch):
    """A norm normalises the layer just before it. Where the alignment pairs no teacher norm with a student norm
    (efficientnet_b0 -> b1: the last block's projection norm), the norm takes the one that follows its layer's
    teacher layer: the statistics of the very channels that layer's weights came from."""
    s_graph = trace(_model("efficientnet_b1", 1), (3, 32, 32))
    t_graph = trace(_model("efficientnet_b0", 0), (3, 32, 32))
    with_rule = match_graphs(s_graph, t_graph).matches
    monkeypatch.setattr(match, "_partner_norms", lambda *args: {})
    without = match_graphs(s_graph, t_graph).matches
    filled = sorted(set(with_rule) - set(without))
    assert filled, "this pair leaves norms that only the rule fills"
    for i in filled:
        producer = with_rule[i - 1].sources[0]
        assert s_graph.units[i].kind == "norm" and t_graph.units[producer + 1].kind == "norm"
        assert with_rule[i].sources == [producer + 1]


def test_squeeze_excite_layers_match_only_each_other():
    """A gate's C -> C/4 -> C convolutions on pooled features do another job than a main-path layer: a teacher's
    never seed a student's main path, and a student's stay at init when the teacher has none."""
    rows = transfer(_model("efficientnet_b0", 0), _model("mnasnet_100", 1), top_k=3).rows
    assert not [r["student"] for r in rows if ".se." in r["source"]], "mnasnet has no gate to take them"
    rows = transfer(_model("resnet18", 0), _model("mobilenetv3_small_050", 1), top_k=3).rows
    gate_rows = [r for r in rows if ".se." in r["student"]]
    assert gate_rows and all(r["method"] == "init" for r in gate_rows)
    rows = transfer(_model("mobilenetv3_large_100", 0), _model("mobilenetv3_small_050", 1), top_k=3).rows
    taken = [r for r in rows if ".se." in r["student"] and r["method"] != "init"]
    assert taken and all(".se." in r["source"] for r in taken), "gates seed gates"


def test_head_as_source_false_keeps_the_classifiers_to_each_other():
    """Across families a linear and a 1x1 conv are the same map, so the teacher's fc can seed body layers (the
    default); head_as_source=False matches the two classifiers only with each other."""
    teacher, student = _model("resnet18", 0), _model("mobilenetv3_small_050", 1)
    rows = transfer(teacher, student, top_k=3, input_size=(3, 32, 32)).rows
    assert [r for r in rows if "fc." in r["source"] and not r["student"].startswith("classifier")], \
        "the default lets resnet18's fc seed mobilenetv3's body"
    rows = transfer(teacher, student, top_k=3, input_size=(3, 32, 32), head_as_source=False).rows
    head = [r for r in rows if r["student"].startswith("classifier.")]
    assert head and all(r["source"] == r["student"].replace("classifier", "fc") for r in head), head
    assert not [r["student"] for r in rows if "fc." in r["source"] and r not in head], "fc seeds no body layer"


def test_norm_transfer_off_leaves_norms_at_init():
    teacher, student = _model("resnet18", 0), _model("resnet18", 1)
    before = {k: v.clone() for k, v in student.state_dict().items() if "bn" in k or "downsample.1" in k}
    report = transfer(teacher, student, transfer_norm=False)
    after = student.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "norm weights and statistics untouched"
    assert torch.equal(after["conv1.weight"], teacher.state_dict()["conv1.weight"]), "convs still transfer"
    assert all(r["reason"] == "norm transfer off" for r in report.rows if r["kind"] == "norm")


def test_head_with_other_class_count_stays_at_init_unless_asked():
    teacher = _model("resnet18", 0, num_classes=10)
    student = _model("resnet18", 1, num_classes=3)
    init = student.fc.weight.clone()
    report = transfer(teacher, student)
    assert torch.equal(student.fc.weight, init), "a 10-class head must not be squeezed into 3 classes by default"
    assert any("class count" in r["reason"] for r in report.rows if r["student"] == "fc.weight")
    transfer(teacher, student, transfer_head=True)
    assert not torch.equal(student.fc.weight, init), "transfer_head=True fills it"


def test_several_teachers_each_tensor_takes_its_best_source():
    exact, other = _model("resnet18", 0), _model("mobilenetv3_small_050", 0)
    student = _model("resnet18", 1)
    report = transfer([other, exact], student)
    assert torch.allclose(_logits(exact, 32), _logits(student, 32), atol=1e-6), "the identical teacher wins everywhere"
    assert set(r["teacher"] for r in report.rows) == {1}


def test_bad_input_is_refused_clearly():
    model = _model("resnet18", 0)
    with pytest.raises(ValueError, match="same object"):
        transfer(model, model)
    with pytest.raises(ValueError, match="lam"):
        transfer(_model("resnet18", 1), model, lam=2)
    with pytest.raises(TypeError, match="kaggle_tli.transfer"):
        transfer("weights.safetensors", model)


def test_report_formats(tmp_path):
    report = transfer(_model("resnet18", 0), _model("resnet34", 1))
    text = report.summary()
    assert "coverage" in text and "zeroed" in text
    path = tmp_path / "transfer.csv"
    report.to_csv(path)
    assert path.read_text().splitlines()[0].startswith("student,shape,kind,method,source")
    assert "<table" in report._repr_html_()


def test_tli_score_identity_ordering_and_no_side_effects():
    a, b = _model("mnasnet_100", 0), _model("mnasnet_100", 1)
    sp, tf = _model("spnasnet_100", 0), _model("tf_efficientnet_b0", 0)
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b, sp, tf)]
    assert tli_score(a, b) == 1.0
    close, far = tli_score(sp, a), tli_score(tf, a)
    assert 0 <= far < close < 1, f"paper Fig. 7 ordering: spnasnet {close:.3f} > tf_efficientnet_b0 {far:.3f}"
    assert tli_score(a, sp) == pytest.approx(close), "the score is symmetric"
    for m, state in zip((a, b, sp, tf), states, strict=True):
        assert all(torch.equal(m.state_dict()[k], v) for k, v in state.items()), "scoring changed a weight"


def test_similarity_matrix_and_rank_teachers():
    models = {n: _model(n, 0) for n in ("mnasnet_100", "spnasnet_100", "tf_efficientnet_b0")}
    frame = similarity_matrix(models, progress=False)
    assert list(frame.index) == list(models) and list(frame.columns) == list(models)
    assert (frame.values.diagonal() == 1.0).all() and (frame.values == frame.values.T).all()
    ranked = rank_teachers(_model("mnasnet_100", 1), models)
    assert list(ranked["teacher"])[:2] == ["mnasnet_100", "spnasnet_100"], ranked


def test_head_protection_reads_the_traced_logits_for_any_model():
    def net(classes):
        torch.manual_seed(classes)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    teacher, student = net(10), net(3)
    head = student[4].weight.clone()
    report = transfer(teacher, student, input_size=(3, 16, 16))
    assert torch.equal(student[4].weight, head), "a plain nn.Module's 3-class head must not take a 10-class head"
    assert torch.equal(student[0].weight, teacher[0].weight)
    assert any("class count" in r["reason"] for r in report.rows if r["student"] == "4.weight")


def test_the_first_output_of_a_multi_output_model_is_read_as_its_logits():
    class LogitsAndFeatures(nn.Module):
        def __init__(self, classes):
            super().__init__()
            torch.manual_seed(classes)
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(16, classes)

        def forward(self, x):
            features = self.body(x)
            return self.fc(features), {"features": features}

    teacher, student = LogitsAndFeatures(10), LogitsAndFeatures(5)
    head = student.fc.weight.clone()
    transfer(teacher, student, input_size=(3, 16, 16))
    assert torch.equal(student.fc.weight, head), "the 16-wide features are not the logits: the 5-class head stays"
    assert trace(student, (3, 16, 16)).output_shape == (1, 5)


def test_with_several_teachers_the_head_comes_from_one_with_the_students_classes():
    same, other = _model("resnet18", 0), _model("resnet18", 2, num_classes=10)
    student = _model("resnet18", 1)
    transfer([other, same], student)
    assert torch.equal(student.fc.weight, same.fc.weight), "a 10-class teacher must not block the 7-class one"


def test_a_compiled_model_is_traced_through_the_module_it_wraps():
    teacher, student = _model("resnet10t", 0), _model("resnet10t", 1)
    report = transfer(teacher, torch.compile(student), input_size=(3, 32, 32))  # compiled code is never run
    assert {r["method"] for r in report.rows} == {"copy"} and report.coverage == 1.0
    assert torch.equal(_logits(teacher, 32), _logits(student, 32))
    assert tli_score(torch.compile(teacher), student) == 1.0


def test_frozen_batchnorm_is_a_norm_and_every_buffer_has_a_row():
    from timm.layers import freeze_batch_norm_2d

    teacher, student = _model("resnet18", 0), freeze_batch_norm_2d(_model("resnet18", 1))
    report = transfer(teacher, student)
    assert {r["method"] for r in report.rows} == {"copy"}, "FrozenBatchNorm2d keeps its affine tensors as buffers"
    assert torch.allclose(_logits(teacher, 32), _logits(student, 32), atol=1e-5)

    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

        def forward(self, x):
            return self.net(x - self.mean)

    report = transfer(Normalised(), Normalised(), input_size=(3, 8, 8))
    rows = {r["student"]: r for r in report.rows}
    assert set(rows) == set(Normalised().state_dict()), "one row per student tensor"
    assert rows["mean"]["method"] == "init" and "buffer" in rows["mean"]["reason"]


def test_report_score_is_the_tli_score():
    teacher, student = _model("resnet18", 0), _model("resnet34", 1)
    expected = tli_score(teacher, student)
    assert transfer(teacher, student).score == pytest.approx(expected)


def test_extra_blocks_copy_keeps_the_duplicates_whole():
    teacher = _model("resnet18", 0)
    student = _model("resnet34", 1)
    report = transfer(teacher, student, extra_blocks="copy")
    assert "zeroed" not in report.methods() and report.coverage == 1.0
    assert torch.equal(student.layer1[2].bn2.weight, teacher.layer1[1].bn2.weight), "a whole copy of its neighbour"
    assert not torch.allclose(_logits(teacher, 64), _logits(student, 64), atol=1e-3), "so the function changes"
    with pytest.raises(ValueError, match="extra_blocks"):
        transfer(teacher, _model("resnet34", 1), extra_blocks="zero")


def _relative_gap(student: nn.Module, teacher: nn.Module, size: int = 32) -> float:
    target = _logits(teacher, size)
    return ((_logits(student, size) - target).norm() / target.norm()).item()


def test_relu_to_silu_student_is_rescaled_to_keep_the_teachers_function():
    teacher = _model("resnet18", 0)
    torch.manual_seed(5)  # running statistics that fit the test inputs: eval mode then computes something sensible
    recalibrate_norms(teacher, [torch.randn(16, 3, 32, 32) for _ in range(4)])
    plain, sharpened = (_model("resnet18", 1, act_layer="silu") for _ in range(2))
    off = transfer(teacher, plain, activation_scale=1.0)
    on = transfer(teacher, sharpened)
    assert "activation_scale" not in off.settings and on.settings["activation_scale"] == 4.0, on.settings
    noted = {r["student"] for r in on.rows if "activation_scale" in r["reason"]}
    assert {"bn1.weight", "layer4.1.bn2.bias", "fc.weight", "layer1.0.bn1.running_var"} <= noted
    assert "bn1.running_mean" not in noted, "the stem's norm sees the input itself: its statistics stay"
    # eval mode, running statistics and all: 4x sharper activations come about 4x closer to the teacher's ReLUs
    assert _relative_gap(sharpened, teacher) < 0.5 * _relative_gap(plain, teacher)
    sharper = _model("resnet18", 1, act_layer="silu")
    transfer(teacher, sharper, activation_scale=16.0)
    assert _relative_gap(sharper, teacher) < 0.1
    assert "activation_scale" not in transfer(teacher, _model("resnet18", 2)).settings  # ReLU -> ReLU: nothing to do


class _Pooled(nn.Module):
    """conv-bn-act, then features renormalised before the classifier: a scale never reaches it."""

    def __init__(self, act: type[nn.Module]):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), act()
        self.norm, self.fc = nn.BatchNorm1d(8, affine=False), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.norm(self.act(self.bn(self.conv(x))).mean((2, 3))))


def test_activation_rescaling_is_not_kept_where_it_does_not_bring_the_student_closer():
    torch.manual_seed(0)
    teacher = _Pooled(nn.ReLU)
    plain, tried = _Pooled(nn.SiLU), _Pooled(nn.SiLU)
    tried.load_state_dict(plain.state_dict())
    transfer(teacher, plain, activation_scale=1.0, input_size=(3, 16, 16))
    report = transfer(teacher, tried, input_size=(3, 16, 16))
    assert report.settings["activation_scale"] == 1.0 and "homogeneous" in report.settings["activation_scale_skipped"]
    for (name, a), b in zip(plain.state_dict().items(), tried.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} changed although the rescaling was undone"

    gated = transfer(_model("resnet18", 0), _model("seresnet18", 1, act_layer="silu"))
    assert "sigmoid" in gated.settings["activation_scale_skipped"], "squeeze-excite gates: not even tried"
    other_size = transfer(teacher, _Pooled(nn.SiLU), input_size=(3, 16, 16), teacher_input_size=(3, 20, 20))
    assert "other sizes" in other_size.settings["activation_scale_skipped"], "no common probe: not tried"
    with pytest.raises(ValueError, match="activation_scale"):
        transfer(teacher, _Pooled(nn.SiLU), activation_scale=0.5)
