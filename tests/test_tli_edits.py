"""What a kernel or stride edit keeps of the teacher's function (engine issue; figures in docs/benchmarks.md).

A larger kernel keeps it exactly: the teacher's taps in the centre, a zero margin. A stride edit cannot: the layers
after it see feature maps at another resolution, so no choice of weights makes the student compute the teacher's
function on the same input. What the copied weights do keep is the teacher's function on the input enlarged by the
stride removed, which is what these tests pin."""

import torch
import torch.nn.functional as F
from test_tli_growth import _randomised

import kaggle_tli as kt
from kaggle_tli.tli import transfer


def _pair(base: str, name: str, edit):
    if not kt.models.is_arch(name):
        kt.register_edit(name, base=base, edits=[edit])
    torch.manual_seed(0)
    teacher = _randomised(kt.create_model(base, num_classes=10), 5)
    torch.manual_seed(1)
    return teacher, kt.create_model(name, num_classes=10).eval()


def _relative(want: torch.Tensor, got: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def test_a_larger_kernel_keeps_the_function_exactly():
    teacher, student = _pair("resnet18", "edits_r18_k5", kt.change_kernel_size(5, pattern="layer*.conv*"))
    report = transfer(teacher, student, input_size=(3, 64, 64))
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert _relative(teacher(x), student(x)) <= 1e-5
    assert report.coverage == 1.0


def test_a_stride_edit_computes_the_teachers_function_on_the_enlarged_input():
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    enlarged = F.interpolate(x, scale_factor=2, mode="nearest")
    for base, name, pattern, bound in (("resnet18", "edits_r18_stem_s1", "conv1", 0.15),
                                       ("efficientnet_b0", "edits_eb0_stem_s1", "conv_stem", 0.02)):
        teacher, student = _pair(base, name, kt.change_stride(1, pattern=pattern))
        report = transfer(teacher, student, input_size=(3, 64, 64))
        assert report.coverage == 1.0 and {r["method"] for r in report.rows} <= {"copy", "init"}, "every weight copied"
        with torch.no_grad():
            same_input, on_enlarged = _relative(teacher(x), student(x)), _relative(teacher(enlarged), student(x))
        assert on_enlarged <= bound, f"{name}: {on_enlarged:.3f} from the teacher on 2x images"
        assert on_enlarged < same_input / 4, "closer to the teacher at twice the size than at the same size"
