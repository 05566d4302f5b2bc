"""The training benchmarks run end to end on a tiny Kaggle-shaped folder (the real runs live in docs/benchmarks.md)."""

import math

import pandas as pd
import pytest
import torch

from kaggle_tli.bench import convergence as cv
from kaggle_tli.bench import norm, teachers


@pytest.fixture(scope="module")
def data(make_image_competition, tmp_path_factory):
    torch.set_num_threads(1)
    root = make_image_competition(tmp_path_factory.mktemp("comp"), digits=(0, 1, 2), per_class=20)
    return cv.load_folder(root, n_valid=15)


def test_folder_loads_as_three_channel_tensors(data):
    assert data.x_train.shape[1:] == (3, 32, 32) and len(data.x_valid) == 12, "a fifth of 60 images held out"
    assert data.num_classes == 3 and set(data.y_train.tolist()) <= {0, 1, 2}
    first = [y.tolist() for _, y in data.batches(3, 8, seed=1)]
    assert first == [y.tolist() for _, y in data.batches(3, 8, seed=1)], "same seed, same batches for every method"


def test_convergence_run_summary_and_plot(data, tmp_path):
    students = (cv.Student("tiny", "mobilenetv3_small_050", teacher="resnet10t", methods=("kaiming", "tli",
                                                                                          "same_name")),)
    cfg = cv.Config(steps=4, teacher_steps=4, seeds=(0,), students=students, eval_every=2, threads=1, cache=None,
                    baselines=False)
    curves, teacher_frame = cv.run(data, cfg)
    assert set(curves["method"]) == {"kaiming", "tli", "same_name"} and list(teacher_frame["teacher"]) == ["resnet10t"]
    assert sorted(set(curves["step"])) == [0, 2, 4], "evaluated from step 0"
    assert curves[["accuracy", "accuracy_precise"]].notna().all().all(), "both metrics at every evaluation"
    probed = curves.groupby("method")["head_acc_probe"].apply(lambda v: v.notna().all())
    assert probed["tli"] and not probed["kaiming"], "tli refits the head where a probe helps, as iterate does"
    assert list(teacher_frame.columns) == ["teacher", "seed", "teacher_accuracy_precise", "teacher_accuracy"]
    table = cv.summarise(curves)
    assert {"acc_step0", "acc_final", "max_std", "steps_to_kaiming_final"} <= set(table.columns)
    tli = table[table.method == "tli"].iloc[0]
    assert 0 < tli["coverage"] <= 1
    steps = pd.DataFrame({"step": [0, 2], "accuracy": [0.1, 0.2]})
    assert cv.steps_to_reach(steps, 0.9, "accuracy") == math.inf and cv.steps_to_reach(steps, 0.2, "accuracy") == 2
    md = cv.write_results(curves, tmp_path)
    assert md.name == "convergence.md" and (tmp_path / "convergence_evalmode.md").exists()
    assert (tmp_path / "convergence.png").stat().st_size > 10_000 and (tmp_path / "curves.csv").exists()
    assert (tmp_path / "convergence_paired.md").exists() and (tmp_path / "convergence_evalmode_paired.md").exists()


def test_paired_differences_compare_seed_by_seed():
    rows = [dict(student="s", method=m, seed=seed, step=step, accuracy_precise=acc)
            for m, accs in (("tli", (0.5, 0.9, 0.6, 0.7)), ("kaiming", (0.1, 0.8, 0.5, 0.8)))
            for (seed, step), acc in zip(((0, 0), (0, 5), (1, 0), (1, 5)), accs, strict=True)]
    diffs = cv.paired_differences(pd.DataFrame(rows)).set_index("over seeds")
    assert list(diffs["versus"]) == ["kaiming"] * 3
    assert diffs.loc["mean", "step 0"] == pytest.approx(0.25) and diffs.loc["min", "step 0"] == pytest.approx(0.1)
    assert diffs.loc["min", "step 5"] == pytest.approx(-0.1) and diffs.loc["max", "step 5"] == pytest.approx(0.1)


def test_precise_evaluation_refits_norms_on_a_copy_of_the_statistics(data):
    model = cv.build("resnet10t", data.num_classes, 0)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.fill_(1e6)  # statistics that no longer fit the weights: eval mode is at chance
    before = {n: b.clone() for n, b in model.named_buffers()}
    cv.evaluate_precise(model, data)
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers()), "the model's own statistics come back"
    refit = cv.build("resnet10t", data.num_classes, 0)
    refit.load_state_dict(model.state_dict())
    cv.recalibrate(refit, data, seed=cv.PRECISE_SEED)
    assert cv.evaluate_precise(model, data) == cv.evaluate(refit, data), "same as evaluating after a refit"


def test_evaluating_does_not_change_training(data):
    """Teachers train without evaluations; the weights must be those a run with evaluations reaches."""
    quiet, measured = (cv.build("resnet10t", data.num_classes, 0) for _ in range(2))
    assert cv.train(quiet, data, steps=3, seed=0, eval_every=0) == []
    assert len(cv.train(measured, data, steps=3, seed=0, eval_every=1)) == 4
    assert all(torch.equal(a, b) for a, b in zip(quiet.state_dict().values(), measured.state_dict().values(),
                                                  strict=True))


def test_warmup_makes_the_first_steps_small(data):
    """With warmup the first step moves the weights much less than without; the default (0) is the protocol's."""
    start = cv.build("resnet10t", data.num_classes, 0)
    moved = {}
    for warmup in (0, 9):
        model = cv.build("resnet10t", data.num_classes, 0)
        cv.train(model, data, steps=1, seed=0, eval_every=0, warmup=warmup)
        moved[warmup] = max((a - b).abs().max().item() for a, b in zip(model.parameters(), start.parameters(),
                                                                       strict=True))
    assert 0 < moved[9] < 0.2 * moved[0], moved  # Adam's first step is about lr per weight: lr / 10 here


def test_workers_give_the_same_curves_as_one_process(data):
    """Two spawned single-thread workers run the same jobs as the in-process path, bit for bit."""
    students = (cv.Student("tiny", "resnet10t", teacher="resnet10t", methods=("kaiming", "tli")),)
    cfg = cv.Config(steps=2, teacher_steps=2, seeds=(0,), students=students, eval_every=2, threads=1, cache=None,
                    baselines=False)
    serial, _ = cv.run(data, cfg)
    parallel, _ = cv.run(data, cv.Config(**{**cfg.__dict__, "workers": 2}))
    columns = ["method", "step", "accuracy", "accuracy_precise"]
    pd.testing.assert_frame_equal(serial[columns], parallel[columns])


def test_norm_chain_and_teachers_correlation(data, tmp_path):
    curves = norm.run_chain(data, steps=2, seeds=(0,), eval_every=2,
                            chain=("mobilenetv3_small_050", "mobilenetv3_small_075"))
    assert set(curves["variant"]) == set(norm.VARIANTS) and set(curves["stage"]) == {0, 1}
    assert len(norm.summarise(curves)) == 2 * len(norm.VARIANTS)
    norm.plot(curves, tmp_path / "n.png")

    frames = teachers.run(data, student="mobilenetv3_small_050", teachers=("resnet10t", "mobilenetv3_small_075",
                                                                            "mnasnet_050"),
                          teacher_steps=2, steps=2, seeds=(0,), eval_every=2, threads=1, cache=tmp_path)
    table = teachers.summarise(frames)
    assert len(table) == 4 and table["tli_score"].notna().sum() == 3, "three teachers and the Kaiming row"
    assert all(-1 <= teachers.rank_correlation(table, x, y)[0] <= 1 for x, y in teachers.CORRELATIONS)
    md = teachers.write_results(frames, tmp_path / "out").read_text()
    assert md.count("Spearman rho") == len(teachers.CORRELATIONS) and (tmp_path / "out" / "teachers.png").exists()
    assert list(tmp_path.glob("teacher-*.safetensors")), "teachers are cached for the next run"


def test_a_misspelt_teacher_fails_before_anything_trains(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        teachers.main(["--teachers", "resnet18", "mobilenetv2_10", "--out", str(tmp_path / "t")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "mobilenetv2_10" in err and "mobilenetv2_100" in err, "the closest known names are suggested"
    assert not (tmp_path / "t").exists(), "nothing was created"


def test_teacher_trains_until_it_reaches_the_target_accuracy(data, tmp_path):
    _, reached = cv.get_teacher("resnet10t", data, steps=6, seed=0, cache=tmp_path, target=0.0, check_every=2,
                                progress=False)
    assert reached["steps"] == 2, "stops at the first check that reaches the target"
    teacher, capped = cv.get_teacher("resnet10t", data, steps=6, seed=0, cache=tmp_path, target=1.01, check_every=2,
                                     channels_last=True, progress=False)
    assert capped["steps"] == 6, "an unreachable target trains the most steps allowed"
    assert {p.name for p in tmp_path.glob("*.safetensors")} == {
        f"teacher-resnet10t-{data.name}-6-s0-to0by2-refit.safetensors",
        f"teacher-resnet10t-{data.name}-6-s0-to1.01by2-cl-refit.safetensors"}, "target and layout are part of the name"
    assert all(p.is_contiguous() for p in teacher.parameters()), "teachers come back NCHW whatever they trained in"
    again, cached = cv.get_teacher("resnet10t", data, steps=6, seed=0, cache=tmp_path, target=1.01, check_every=2,
                                   channels_last=True, progress=False)
    assert cached == capped and all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(),
                                                                       again.state_dict().values(), strict=True))


def test_channels_last_training_converts_the_model_and_its_inputs(data):
    model = cv.build("mobilenetv3_small_050", data.num_classes, 0)
    curve = cv.train(model, data, steps=2, seed=0, eval_every=2, channels_last=True)
    assert cv._memory_format(model) == torch.channels_last and len(curve) == 2
    assert cv._memory_format(cv.build("resnet10t", data.num_classes, 0)) == torch.contiguous_format


def test_after_injection_options_freeze_transferred_tensors_and_distill_from_the_teacher(data):
    student, teacher = cv.build("resnet10t", data.num_classes, 0), cv.build("resnet10t", data.num_classes, 1).eval()
    transferred = {n for n, _ in student.named_parameters() if not n.startswith("fc.")}
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    after = cv.AfterInjection(transferred=transferred, freeze_steps=2, teacher=teacher, distill=0.5)
    cv.train(student, data, steps=2, seed=0, batch_size=8, eval_every=0, after=after)
    moved = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"fc.weight", "fc.bias"}, f"only the fresh head trains while the rest is frozen: {sorted(moved)[:4]}"
    assert len(calls) == 2, "one teacher forward pass per distilled step"
