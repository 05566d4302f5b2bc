"""The transfer never corrupts a model: a pinned list of families chosen for their traps transfers onto itself
exactly, leaves the teacher bit-identical and no tensor on the meta device; the integrity guard itself fires."""

import pytest
import timm
import torch
from torch import nn

from kaggle_tli.tli import TransferIntegrityError, transfer
from kaggle_tli.tli.guard import check_student, check_unchanged, fingerprint
from kaggle_tli.tli.units import first_names, named_tensors

# timm name -> (build kwargs, input size), each here for a trap it sets
TRAPS = {
    "coat_lite_tiny": ({"img_size": 64}, 64),  # one position-encoding module shared by several blocks
    "csatv2": ({}, 64),  # once failed both traces
    "tresnet_m": ({}, 64),  # space-to-depth stem, in-place activated BatchNorm
    "vit_tiny_patch16_224": ({"img_size": 32}, 32),  # attention, class token, position embedding
    "swin_tiny_patch4_window7_224": ({}, 224),  # relative position bias tables, shifted windows
    "crossvit_tiny_240": ({}, 240),  # two token branches at two patch sizes
    "xcit_nano_12_p16_224": ({"img_size": 32}, 32),  # cross-covariance attention, class-attention blocks
    "levit_128s": ({}, 224),  # attention biases indexed by buffers
    "pit_ti_224": ({}, 224),  # pooling between token stages
    "mobilevit_xxs": ({}, 64),  # unfold / fold around a transformer
    "convnext_atto": ({}, 32),  # layer-scale parameters that are not module weights
    "poolformer_s12": ({}, 32),  # layer scale, pooling as the token mixer
    "efficientnet_b0": ({}, 32),  # squeeze-excite gates
    "mobilenetv3_small_050": ({}, 32),  # hard-swish, hard-sigmoid gates
    "regnety_002": ({}, 32),  # grouped convolutions with squeeze-excite
    "densenet121": ({}, 32),  # concatenations
    "dla34": ({}, 64),  # tree aggregation: one node feeds several merges
    "hrnet_w18_small": ({}, 64),  # parallel resolutions fused repeatedly
    "ghostnet_050": ({}, 32),  # cheap operations concatenated with their input
    "repvgg_a0": ({}, 32),  # three parallel branches per block
    "resnest14d": ({}, 64),  # split attention
    "skresnet18": ({}, 32),  # selective-kernel attention
    "fastvit_t8": ({}, 64),  # re-parameterisable branches
}


def _randomised(name: str, kwargs: dict, seed: int) -> nn.Module:
    """A model whose every tensor is non-trivial, so a copy that skips one shows (an untrained timm model zeroes
    some norms and has running statistics of 0 and 1)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", list(TRAPS))
def test_transfer_onto_itself_leaves_the_teacher_untouched_and_the_student_equal(name):
    kwargs, size = TRAPS[name]
    teacher, student = _randomised(name, kwargs, 0), _randomised(name, kwargs, 1)
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    report = transfer(teacher, student, input_size=(3, size, size))
    for role, model in (("teacher", teacher), ("student", student)):
        meta = [n for n, t in model.state_dict().items() if t.is_meta]
        assert not meta, f"{name}: the {role} has tensors on the meta device: {meta[:5]}"
    changed = [k for k, v in teacher.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"{name}: the transfer changed the teacher: {changed[:5]}"
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = teacher(x), student(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), f"{name}: {(got - want).abs().max():.2e} off"
    assert report.coverage == 1.0, f"{name}: coverage {report.coverage}"


class _SharedTwice(nn.Module):
    """One block called twice, a module registered under two names, and an output layer tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 8, bias=False)  # used as a (8, 16) matrix, as an input embedding would be
        self.block = nn.Sequential(nn.Linear(16, 16), nn.ReLU(inplace=True))
        self.alias = self.block  # the same module object under a second name
        self.out = nn.Linear(16, 8, bias=False)
        self.out.weight = self.embed.weight  # tied: one tensor under two names

    def forward(self, x):
        h = x @ self.embed.weight  # (B, 8) @ (8, 16)
        h = self.alias(self.block(h))
        return self.out(h)


def test_a_module_called_twice_and_registered_twice_with_tied_weights_transfers_exactly():
    torch.manual_seed(0)
    teacher = _SharedTwice()
    torch.manual_seed(1)
    student = _SharedTwice()
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    transfer(teacher, student, input_size=(8,))
    assert student.embed.weight is student.out.weight, "the tie must survive the transfer"
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items()), "the teacher changed"
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(student(x), teacher(x)), "the student must compute what the teacher does"


def test_the_guards_walk_names_every_tensor_as_torchs_own_generators_do():
    # one walk over the modules stands in for named_parameters / named_buffers(remove_duplicate=False), and for
    # named_parameters()'s first names: shared modules, tied weights and a buffer outside the state dict included
    model = _SharedTwice()
    model.register_buffer("scratch", torch.zeros(2), persistent=False)
    params, buffers = named_tensors(model)
    assert list(params.items()) == list(model.named_parameters(remove_duplicate=False))
    assert list(buffers.items()) == list(model.named_buffers(remove_duplicate=False))
    assert first_names(params) == [name for name, _ in model.named_parameters()]


def test_the_guard_names_a_teacher_written_in_place_a_meta_student_and_a_non_finite_one():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    prints = fingerprint(model)
    check_unchanged(model, prints, "teacher")  # untouched: silent
    with torch.no_grad():
        model[1].running_mean.add_(0)  # an in-place write, even one that changes no value, bumps the version
    with pytest.raises(TransferIntegrityError, match=r"teacher was modified .*1\.running_mean"):
        check_unchanged(model, prints, "teacher")
    meta = nn.Linear(4, 4).to("meta")
    with pytest.raises(TransferIntegrityError, match=r"meta device .*weight"):
        check_student(meta)
    nan = nn.Linear(4, 4)
    with torch.no_grad():
        nan.bias[0] = float("nan")
    with pytest.raises(TransferIntegrityError, match=r"non-finite .*bias.*Check the teacher"):
        check_student(nan)


def test_a_diverged_teacher_is_refused_after_the_transfer_instead_of_a_nan_student():
    torch.manual_seed(0)
    teacher, student = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)), nn.Sequential(
        nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        teacher[0].weight[0, 0] = float("inf")
    with pytest.raises(TransferIntegrityError, match="non-finite"):
        transfer(teacher, student, input_size=(4,))
