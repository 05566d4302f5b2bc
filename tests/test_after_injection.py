"""Training after injection: precise validation, learning-rate groups from the transfer report, distillation.

Budget: resnet10t at 32 px on a 120-image digits competition, a few steps per run, torch on one thread.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import kaggle_tli.train.distill as distill_module
import kaggle_tli.train.norms as norms_module
from kaggle_tli import models as registry
from kaggle_tli.bench.overhead import run_overhead
from kaggle_tli.bench.precise import refit_scores
from kaggle_tli.checkpoint import load_weights
from kaggle_tli.data import DataError, ImageCsvData, PixelCsvData
from kaggle_tli.ledger import Ledger
from kaggle_tli.models import create_model
from kaggle_tli.stages import finetune, iterate
from kaggle_tli.train import TrainConfig
from kaggle_tli.train.distill import distill_loss
from kaggle_tli.train.groups import apply_freeze, param_groups
from kaggle_tli.train.norms import precise_loader, refit_norms

FAST = dict(batch_size=16, lr=3e-3, progress=False)
ARCH = "resnet10t_silu_after"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread for this module


@pytest.fixture(scope="module")
def teacher(make_image_competition, tmp_path_factory):
    root = make_image_competition(tmp_path_factory.mktemp("comp"), digits=(0, 1, 2, 3), per_class=30)
    data = ImageCsvData(root, image_size=32, folds=3)
    runs = tmp_path_factory.mktemp("runs")
    run = finetune("resnet10t", data, runs=runs, epochs=3, **FAST)
    if not registry.is_arch(ARCH):
        registry.register_edit(ARCH, base="resnet10t", edits=[registry.swap_activation("silu")])
    return run, data, runs


# ------------------------------------------------------------------------------------ distillation's loss


def test_distill_loss_per_task_is_zero_on_the_teacher_and_matches_its_formula():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    for task in ("single_label", "binary", "multilabel", "regression"):
        assert distill_loss(t, t, task, 2.0).abs().item() < 1e-6 or task == "multilabel", task
        assert distill_loss(s, t, task, 2.0).item() > 0, task
    kl = (F.softmax(t / 2, 1) * (F.log_softmax(t / 2, 1) - F.log_softmax(s / 2, 1))).sum(1).mean() * 4
    assert distill_loss(s, t, "single_label", 2.0).item() == pytest.approx(kl.item(), rel=1e-5)
    bce = F.binary_cross_entropy_with_logits(s / 2, torch.sigmoid(t / 2)) * 4
    assert distill_loss(s, t, "multilabel", 2.0).item() == pytest.approx(bce.item(), rel=1e-5)
    assert distill_loss(s, t, "regression", 2.0).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-6)
    one_s, one_t = s[:, :1], t[:, :1]  # a binary head with one logit: the Bernoulli KL
    p, q = torch.sigmoid(one_t / 2), torch.sigmoid(one_s / 2)
    bern = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * 4
    assert distill_loss(one_s, one_t, "binary", 2.0).item() == pytest.approx(bern.item(), rel=1e-4)
    with pytest.raises(ValueError, match="knows the tasks"):
        distill_loss(s, t, "ranking", 2.0)


# ------------------------------------------------------------------------------------ learning-rate groups


def test_param_groups_scale_transferred_and_fresh_tensors_and_the_freeze_zeroes_the_first():
    model = create_model("resnet10t", num_classes=3)
    transferred = {n for n, _ in model.named_parameters() if not n.startswith("fc.")}
    cfg = TrainConfig(lr=1e-3, lr_transferred=0.5, lr_fresh=2.0, freeze_transferred_steps=3)
    groups = param_groups(model, cfg, transferred)
    by_kind = {(g["transferred"], g["weight_decay"] > 0): g for g in groups}
    assert set(by_kind) == {(True, True), (True, False), (False, True), (False, False)}
    assert by_kind[(True, True)]["lr"] == pytest.approx(5e-4) and by_kind[(False, True)]["lr"] == pytest.approx(2e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    apply_freeze(optimizer, cfg, 2)
    assert [g["lr"] for g in optimizer.param_groups if g["transferred"]] == [0.0, 0.0]
    assert all(g["lr"] > 0 for g in optimizer.param_groups if not g["transferred"])


def test_freezing_transferred_tensors_keeps_them_for_the_first_steps(teacher):
    run, data, runs = teacher
    frozen = iterate(run, ARCH, data, max_steps=2, freeze_transferred_steps=2, **FAST)
    start, end = load_weights(frozen.path / "init.safetensors"), load_weights(frozen.path / "model.safetensors")
    params = {n for n, _ in frozen.build_model().named_parameters()}
    moved = [k for k in params if not torch.equal(start[k], end[k])]
    assert not moved, f"transferred tensors moved while frozen: {moved[:3]}"
    log = pd.read_csv(frozen.path / "log.csv")
    assert (log.loc[log["loss"].notna(), "lr"] == 0).all(), "log.csv shows the frozen steps' rate"


# ------------------------------------------------------------------------------------ precise validation


def _accuracy_without_tta(run, data) -> float:
    """The run's saved model.safetensors, scored in eval mode on its validation fold, nothing else."""
    model = run.build_model("last").eval()
    _, valid_idx = data.with_folds(run.path / "folds.csv").fold_indices(run.primary_fold)
    dataset = data.dataset(valid_idx, train=False)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = np.array([int(dataset[i][1]) for i in range(len(dataset))])
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    return float((predicted == y).mean())


def test_ledger_cv_of_a_tli_student_is_its_saved_weights_re_evaluated(teacher):
    run, data, runs = teacher
    student = iterate(run, ARCH, data, max_steps=7, eval_every_steps=3, eval_at_start=True, notes="cv", **FAST)
    assert student.config["eval_norms"] == "precise", "precise validation is the default"
    cv = Ledger(runs).get(student.id)["cv"]
    assert abs(cv - _accuracy_without_tta(student, data)) < 1e-6, (cv, _accuracy_without_tta(student, data))
    log = pd.read_csv(student.path / "log.csv")
    scored = log[log["metric"].notna()].set_index("step")
    assert list(scored.index) == [0, 3, 5, 6, 7], "5 steps an epoch: every 3 steps, each epoch's end, the last"
    running = scored["metric_running"]
    assert running[[0, 3, 5]].notna().all() and running[[6, 7]].isna().all(), \
        "the running statistics are scored in the first epoch only (running_metric_epochs=1)"


@pytest.mark.parametrize("keep_bytes", [None, 0])
def test_the_refit_batches_are_loaded_once_when_they_fit_in_memory(teacher, monkeypatch, keep_bytes):
    run, data, _ = teacher
    if keep_bytes is not None:
        monkeypatch.setattr(norms_module, "KEEP_BYTES", keep_bytes)
    batches = precise_loader(TrainConfig(batch_size=16, num_workers=0), data, data.fold_indices(0)[0],
                             pin_memory=False)
    model = run.build_model()
    stats = []
    for _ in range(2):
        assert refit_norms(model, batches) == len(batches)
        stats.append({k: v.clone() for k, v in model.state_dict().items() if "running" in k})
    assert all(torch.equal(stats[0][k], stats[1][k]) for k in stats[0]), "the same images give the same statistics"
    if keep_bytes is None:
        assert batches.kept is not None and len(batches.kept) == len(batches), "kept after the first refit"
    else:
        assert batches.kept is None, "over the memory cap: loaded again at every refit"


# ------------------------------------------------------------------------------------ distillation


def test_distillation_from_kaiming_init_is_recorded_and_dropped_after_distill_steps(teacher, monkeypatch):
    run, data, runs = teacher
    calls = []
    original = distill_module.distill_loss

    def counted(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(distill_module, "distill_loss", counted)
    student = iterate(run, ARCH, data, init="kaiming", max_steps=3, distill=0.5, distill_temperature=3.0,
                      distill_steps=2, **FAST)
    assert calls == ["single_label", "single_label"], f"one KD term per step before distill_steps: {calls}"
    row = Ledger(runs).get(student.id)
    assert (row["distill"], row["distill_temperature"], row["init"]) == (0.5, 3.0, "kaiming")
    teacher_weights = load_weights(student.path / "teacher.safetensors")
    assert all(torch.equal(v, load_weights(run.weights_path())[k]) for k, v in teacher_weights.items())
    assert student.info["extra"]["teacher"]["run_id"] == run.id
    child = iterate(student, ARCH, data, max_steps=1, **FAST)
    assert Ledger(runs).get(child.id)["distill"] is None, "a child distills only when asked"


# ------------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused_with_the_fix_before_any_run(teacher, make_image_competition, tmp_path):
    run, data, runs = teacher
    before = {p.name for p in runs.iterdir()}
    with pytest.raises(ValueError, match=r"precise_images=\d+ or fewer.*eval_norms='running'"):
        iterate(run, ARCH, data, max_steps=1, precise_images=100_000, **FAST)
    with pytest.raises(ValueError, match=r"needs a teacher.*kt.iterate\(prev_run, arch, distill=0.5\)"):
        finetune("resnet10t", data, runs=runs, max_steps=1, distill=0.5, **FAST)
    assert {p.name for p in runs.iterdir()} == before, "nothing written for refused runs"

    bare = tmp_path / "runs" / run.id
    shutil.copytree(run.path, bare)
    (bare / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no last weights.*distill_from"):
        iterate(bare, ARCH, data, init="kaiming", distill=0.5, max_steps=1, runs=tmp_path / "runs", **FAST)

    two = ImageCsvData(make_image_competition(tmp_path / "two", digits=(0, 1), per_class=6), image_size=32, folds=2)
    other = finetune("resnet10t", two, runs=tmp_path / "other", max_steps=1, **FAST)
    with pytest.raises(DataError, match="outputs 2 values per image but the student has 4 classes"):
        iterate(run, ARCH, data, distill=0.5, distill_from=other, max_steps=1, **FAST)
    assert {p.name for p in runs.iterdir()} == before


# ------------------------------------------------------------------------------------ what the options cost


def test_overhead_benchmark_reports_precise_validation_and_distillation_costs(pixel_competition):
    data = PixelCsvData(pixel_competition, image_size=32)
    result = run_overhead("resnet10t", batch_size=8, steps=2, warmup=0, repeats=1, data=data, device="cpu")
    assert result["steps_measured"] == {"ours": 1, "bare": 2, "distill": 1}, "our loops' first step has no start"
    assert result["precise"]["precise_images"] == len(data.fold_indices(0)[0]), "all of a fold smaller than the 128-image floor"
    assert result["precise_s_per_eval"] > 0 and result["distill_s_per_step"] > 0
    assert result["overhead_with_precise"] > result["overhead"], "the refit costs something, spread over an epoch"


def test_the_precise_benchmark_scores_each_refit_count_and_draw(teacher):
    run, data, _ = teacher
    rows = refit_scores(run.build_model(), data, counts=[16, 32], draws=2)
    n_train = len(data.fold_indices(0)[0])
    assert [r["refit_images"] for r in rows] == ["running", "16", "16", "32", "32", str(n_train)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
