"""The report's coverage is honest: it counts exactly the student elements the teacher alone determines, which an
independent probe finds by running the transfer on two students whose parameters were shifted apart."""

import pytest
import timm
import torch

from kaggle_tli.tli import transfer

PAIRS = [
    ("resnet18", {}, "efficientnet_b0", {}),  # across families: ComboInjection, with blends
    ("spnasnet_100", {}, "mnasnet_100", {}),
    ("efficientnet_b0", {}, "efficientnet_b2", {}),  # growth: wider and deeper
    ("resnet10t", {}, "resnet10t", {"channels": (96, 192, 384, 768)}),  # silent growth: new units stay at init
]


def _build(name: str, kw: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()


@pytest.mark.parametrize("t_name,t_kw,s_name,s_kw", PAIRS)
def test_reported_coverage_equals_the_share_two_shifted_students_agree_on(t_name, t_kw, s_name, s_kw):
    teacher = _build(t_name, t_kw, 0)
    students = [_build(s_name, s_kw, 1), _build(s_name, s_kw, 1)]
    with torch.no_grad():
        for p in students[1].parameters():
            p.add_(0.5)  # a different init: every element the transfer leaves to the student now differs
    reports = [transfer(teacher, s, input_size=(3, 64, 64)) for s in students]
    pairs = list(zip(students[0].parameters(), students[1].parameters(), strict=True))
    total = sum(a.numel() for a, _ in pairs)
    equal = sum(int((a == b).sum()) for a, b in pairs)
    measured = equal / total
    report = reports[0]
    assert abs(report.coverage - measured) < 1e-3, (
        f"{t_name} -> {s_name}: the report says {report.coverage:.4f} covered, the probe finds {measured:.4f}")
    assert 0.0 <= report.blended <= 1.0 - report.coverage + 1e-9, report
