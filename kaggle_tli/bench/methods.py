"""How a benchmark student starts: the initialisation methods compared side by side, by name.

    kaiming      timm's default initialisation (what "training from scratch" means)
    xavier       Xavier-uniform weights, zero biases
    same_name    copy tensors whose name and shape agree (timm's `strict=False`, Hugging Face's
                 `ignore_mismatched_sizes`)
    tli          kaggle_tli's transfer with its defaults, plus variants over lam, top_k, norm transfer and the
                 classifier as a source;
                 `tli combo` is ComboInjection everywhere (the engine before growth kept the function)
    +recal       any of the above followed by re-estimating BatchNorm statistics on a few training batches
    +probe       +recal, then the classifier refitted on the same batches where a linear probe predicts clearly
                 better (`kaggle_tli.tli.refit_head`); `tli` does both, as `kaggle_tli.iterate` does
    ... distill  trained with distillation from the teacher (weight 0.5, temperature 2: iterate(distill=0.5) before
                 its default temperature became 4 on `tli distill T=4`'s evidence); `tli distill=0.9`,
                 `tli distill T=4`, `tli distill lr_transferred=0.3` vary it
    ... lr_transferred=, lr_fresh=, warmup=, freeze=
                 trained with the trainer's options after an injection: learning-rate multipliers for the tensors
                 the transfer report says the teacher set and for fresh ones, a longer warm-up, transferred tensors
                 frozen for the first steps
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from kaggle_tli.tli import transfer
from kaggle_tli.train.groups import TRANSFERRED_METHODS

TRANSFERRED = "_transferred"  # the info key of the tensor names an init set from the teacher (not a table column)


def _xavier(student: nn.Module, _teacher: nn.Module) -> dict:
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return {}


def _same_name(student: nn.Module, teacher: nn.Module) -> dict:
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    kept = {k: v for k, v in t_state.items() if k in s_state and s_state[k].shape == v.shape}
    student.load_state_dict(kept, strict=False)
    n_s = sum(p.numel() for p in student.parameters())
    n_kept = sum(v.numel() for k, v in kept.items() if k in dict(student.named_parameters()))
    return {"coverage": n_kept / n_s, TRANSFERRED: set(kept)}


def _tli(**kw) -> Callable[[nn.Module, nn.Module], dict]:
    def init(student: nn.Module, teacher: nn.Module) -> dict:
        report = transfer(teacher, student, input_size=(3, 32, 32), **kw)
        transferred = {r["student"] for r in report.rows if r["method"] in TRANSFERRED_METHODS}
        return {"coverage": report.coverage, "tli_score": report.score, TRANSFERRED: transferred}

    return init


@dataclass(frozen=True)
class Method:
    """How a student starts: an init function (student, teacher) -> info, then optionally refitted BatchNorm
    statistics and then a refitted classifier, both on the same few training batches."""

    init: Callable[[nn.Module, nn.Module], dict]
    recal: bool = False
    probe: bool = False
    train: dict = field(default_factory=dict)  # AfterInjection options (training.py), e.g. {"distill": 0.5}


# `tli` is what `kaggle_tli.iterate` does by default: transfer() with its defaults, then BatchNorm statistics and
# (where a probe predicts clearly better) the classifier refitted on a few training batches. The variants change one
# thing each; `tli no refit` is transfer() alone, with no data at all.
METHODS: dict[str, Method] = {
    "kaiming": Method(lambda s, t: {}),
    "kaiming+recal": Method(lambda s, t: {}, recal=True),
    "kaiming+probe": Method(lambda s, t: {}, recal=True, probe=True),
    "xavier": Method(_xavier),
    "same_name": Method(_same_name),
    "same_name+recal": Method(_same_name, recal=True),
    "tli": Method(_tli(), recal=True, probe=True),
    "tli no probe": Method(_tli(), recal=True),
    "tli no refit": Method(_tli()),
    "tli top_k=1": Method(_tli(top_k=1), recal=True, probe=True),
    "tli lam=0": Method(_tli(lam=0.0), recal=True, probe=True),
    "tli lam=1": Method(_tli(lam=1.0), recal=True, probe=True),
    "tli no norm": Method(_tli(transfer_norm=False), recal=True, probe=True),
    "tli extra_blocks=copy": Method(_tli(extra_blocks="copy"), recal=True, probe=True),
    # ComboInjection everywhere: the engine before growth kept the function (and the paper's method)
    "tli combo": Method(_tli(method="combo"), recal=True, probe=True),
    # symmetry breaking of duplicated channels (engine issue item 3): the copies split their fan-out evenly
    "tli growth_jitter=0": Method(_tli(growth_jitter=0.0), recal=True, probe=True),
    # the classifiers match only each other: the teacher's seeds no body layer (convergence --students head)
    "tli head_as_source=False": Method(_tli(head_as_source=False), recal=True, probe=True),
    # training after the injection (issue 16): one option changed each
    "tli distill": Method(_tli(), recal=True, probe=True, train={"distill": 0.5}),
    "kaiming distill": Method(lambda s, t: {}, train={"distill": 0.5}),
    "tli lr_transferred=0.3": Method(_tli(), recal=True, probe=True, train={"lr_transferred": 0.3}),
    "tli lr_fresh=3": Method(_tli(), recal=True, probe=True, train={"lr_fresh": 3.0}),
    "tli warmup=20": Method(_tli(), recal=True, probe=True, train={"warmup": 20}),
    "tli freeze=20": Method(_tli(), recal=True, probe=True, train={"freeze_steps": 20}),
    # what might close the gap to the teacher across families: more weight on the teacher, a softer target, both
    # distillation and the trainer's learning-rate groups
    "tli distill=0.9": Method(_tli(), recal=True, probe=True, train={"distill": 0.9}),
    "tli distill T=4": Method(_tli(), recal=True, probe=True, train={"distill": 0.5, "temperature": 4.0}),
    "tli distill lr_transferred=0.3": Method(_tli(), recal=True, probe=True,
                                             train={"distill": 0.5, "lr_transferred": 0.3}),
}
QUICK_METHODS = ("kaiming", "same_name", "tli")
AFTER_INJECTION = ("tli distill", "tli lr_transferred=0.3", "tli lr_fresh=3", "tli warmup=20", "tli freeze=20")


def _iatransfer(student: nn.Module, teacher: nn.Module) -> dict:
    """The authors' follow-up toolkit as a baseline, when it is importable (it is not a dependency)."""
    from iatransfer.toolkit import IAT

    IAT()(teacher, student)
    return {}


def baseline_methods() -> dict[str, Method]:
    """External baselines found in this environment (pip install iatransfer==1.0.3 in a scratch venv)."""
    try:
        import iatransfer.toolkit  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means the baseline is not available
        return {}
    return {"iatransfer": Method(_iatransfer), "iatransfer+recal": Method(_iatransfer, recal=True),
            "iatransfer+probe": Method(_iatransfer, recal=True, probe=True)}


def all_methods() -> dict[str, Method]:
    """Every method this environment can run, by name (worker processes look methods up here)."""
    return {**METHODS, **baseline_methods()}
