"""iterate(): stages 3 + 4 end to end on a tiny competition, lineage in the ledger, TLI vs Kaiming at step 0."""

import re
import shutil
import sys

import pandas as pd
import pytest

from kaggle_tli import models as registry
from kaggle_tli.data import DataError, ImageCsvData
from kaggle_tli.ledger import Ledger
from kaggle_tli.models import registry as names
from kaggle_tli.runs import load_run
from kaggle_tli.stages.finetune import finetune
from kaggle_tli.stages.iterate import iterate

FAST = dict(batch_size=16, lr=3e-3, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread for this module


@pytest.fixture(scope="module")
def teacher(make_image_competition, tmp_path_factory):
    root = make_image_competition(tmp_path_factory.mktemp("comp"), digits=(0, 1, 2, 3), per_class=30)
    data = ImageCsvData(root, image_size=32, folds=3)
    runs = tmp_path_factory.mktemp("runs")
    run = finetune("resnet10t", data, runs=runs, epochs=4, **FAST)
    if not registry.is_arch("resnet10t_silu_test"):
        registry.register_edit("resnet10t_silu_test", base="resnet10t", edits=[registry.swap_activation("silu")])
    return run, data, runs


def _start_metric(run) -> float:
    return run.metrics["start_metric"][str(run.primary_fold)]


def test_iterate_with_tli_beats_kaiming_at_the_first_step_and_keeps_lineage(teacher):
    run, data, runs = teacher
    assert run.metrics["cv"] > 0.6, f"the teacher must have learned something (cv {run.metrics['cv']:.2f})"
    common = dict(max_steps=2, eval_at_start=True, notes="test")
    tli = iterate(run, "resnet10t_silu_test", data, **common)
    scratch = iterate(run, "resnet10t_silu_test", data, init="kaiming", **common)

    assert _start_metric(tli) > _start_metric(scratch) + 0.2, (
        f"TLI student starts at {_start_metric(tli):.2f}, Kaiming at {_start_metric(scratch):.2f}"
    )
    assert tli.report is not None and tli.report.coverage > 0.9
    assert tli.info["extra"]["head_refit"]["refitted"] is False, "a same-family head already fits: kept"
    assert "head_refit" not in scratch.info["extra"], "a Kaiming student keeps timm's init"
    assert (tli.path / "transfer.csv").is_file() and not (scratch.path / "transfer.csv").exists()
    reloaded = load_run(tli.path).report  # read back from transfer.csv and run.json
    assert len(reloaded.rows) > 50 and reloaded.coverage == pytest.approx(tli.report.coverage)
    assert "coverage" in reloaded.summary() and load_run(scratch.path).report is None

    ledger = Ledger(runs)
    lineage = [r["run_id"] for r in ledger.lineage(tli.id)]
    assert lineage == [tli.id, run.id], lineage
    row = ledger.get(tli.id)
    assert (row["stage"], row["init"], row["arch"], row["parent_arch"]) == ("inject", "tli", "resnet10t_silu_test",
                                                                             "resnet10t")
    assert 0 < row["tli_score"] <= 1 and row["coverage"] > 0.9 and row["status"] == "done"
    assert ledger.get(scratch.id)["init"] == "kaiming" and ledger.get(scratch.id)["tli_score"] is None


def test_across_families_the_classifier_is_refitted_and_the_student_starts_above_chance(teacher):
    run, data, _ = teacher
    common = dict(max_steps=1, eval_at_start=True)
    probed = iterate(run, "mobilenetv3_small_050", data, **common)
    plain = iterate(run, "mobilenetv3_small_050", data, refit_head=False, **common)

    head = probed.info["extra"]["head_refit"]
    assert head["refitted"] and head["accuracy_probe"] >= head["accuracy_before"] + 0.05, head
    assert "head_refit" not in plain.info["extra"]
    assert _start_metric(probed) > max(0.5, _start_metric(plain) + 0.2), (_start_metric(probed), _start_metric(plain))


def test_iterate_from_a_run_id_and_a_chain_of_runs(teacher):
    run, data, runs = teacher
    first = iterate(run.id, "resnet10t_silu_test", data, runs=runs, max_steps=1)
    second = iterate(first, "resnet14t", data, max_steps=1)
    lineage = [r["run_id"] for r in Ledger(runs).lineage(second.id)]
    assert lineage == [second.id, first.id, run.id]
    log = pd.read_csv(second.path / "log.csv")
    assert log["loss"].notna().all()


def test_iterate_rebuilds_data_from_the_run(teacher):
    run, _, runs = teacher
    child = iterate(run, "resnet10t", max_steps=1)
    assert child.parent_id == run.id and child.status == "done"


def test_bad_input_is_explained(teacher, tmp_path):
    run, data, _ = teacher
    with pytest.raises(registry.UnknownArchError, match="resnet10"):
        iterate(run, "resnet10tt", data)
    with pytest.raises(ValueError, match="init="):
        iterate(run, "resnet10t", data, init="xavier")
    with pytest.raises(FileNotFoundError, match="no run"):
        iterate(tmp_path / "nope", "resnet10t", data)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "run.json").write_text((run.path / "run.json").read_text())
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        iterate(empty, "resnet10t", data)


def test_a_student_that_cannot_train_on_the_data_is_refused_before_any_refit(teacher, tmp_path, monkeypatch):
    """Input size, class count and input channels are checked before TLI, the refits, the run directory and the
    ledger, with the stages' own messages; the size hint works in iterate as written."""
    import timm

    import kaggle_tli

    run, data, _ = teacher
    monkeypatch.setattr(names, "_REGISTRY", dict(names._REGISTRY))  # registrations here end with the test
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"'vit_tiny_patch16_224' cannot take the data's 32x32 images") as err:
        iterate(run, "vit_tiny_patch16_224", data, runs=out, max_steps=1)
    registry.register_arch("fixed2_test")(lambda num_classes, **kw: timm.create_model("resnet10t", num_classes=2))
    with pytest.raises(DataError, match=r"'fixed2_test' outputs 2 values per image, but the data has 4 classes"):
        iterate(run, "fixed2_test", data, runs=out, max_steps=1)
    registry.register_edit("grey_test", base="resnet10t", edits=[registry.change_in_chans(1)])
    with pytest.raises(DataError, match=r"'grey_test' is registered for 1-channel images.*has 3-channel"):
        iterate(run, "grey_test", data, runs=out, max_steps=1)
    with pytest.raises(TypeError, match="not a spec dict.*register_edit"):
        iterate(run, registry.arch_spec("resnet10t", 4), data, runs=out, max_steps=1)
    assert not out.exists(), "a refused student leaves no run directory and no ledger"

    hint = re.search(r"kt\.register_edit\(.*\)$", str(err.value))
    assert hint, str(err.value)
    eval(hint.group(0), {"kt": kaggle_tli})  # the fix the message gives, as the user would paste it
    child = iterate(run, "vit_tiny_patch16_224_32px", data, runs=out, max_steps=1)
    assert child.status == "done" and child.arch["kwargs"] == {} and child.parent_id == run.id


def test_a_run_whose_directory_was_deleted_says_so(teacher, tmp_path):
    run, data, _ = teacher
    copy = load_run(shutil.copytree(run.path, tmp_path / run.id))
    shutil.rmtree(copy.path)
    with pytest.raises(FileNotFoundError, match=r"directory .* no longer exists.*the ledger may still list it"):
        iterate(copy, "resnet10t", data, max_steps=1)


def test_failing_factory_and_newer_ledger_are_explained(teacher, tmp_path):
    run, data, runs = teacher

    @registry.register_arch("broken_factory_test")
    def broken(num_classes, **kw):
        raise RuntimeError("kernel size must be odd")

    with pytest.raises(registry.ArchBuildError, match="broken_factory_test.*kernel size must be odd"):
        iterate(run, "broken_factory_test", data)

    # data with other classes is a new task, not an error: tests/test_shapes.py (TLI across task shapes)
    newer = tmp_path / "newer-runs"
    newer.mkdir()
    header = (runs / "ledger.csv").read_text().splitlines()[0]
    (newer / "ledger.csv").write_text(header + "\n" + ",".join(["x"] * (header.count(",")) + ["99"]) + "\n")
    with pytest.raises(Exception, match="schema 99"):
        iterate(run, "resnet10t", data, runs=newer)


def test_killed_iterate_leaves_a_whole_row_marked_running(teacher, tmp_path):
    """SIGKILL in the middle of stage 4: the ledger still parses, the run's row says running, the lineage reaches
    the teacher in another runs folder (its rows were imported)."""
    import csv
    import signal
    import subprocess
    import sys
    import time

    run, data, _ = teacher
    out = tmp_path / "runs"
    script = (
        "import torch; torch.set_num_threads(1)\n"
        "from kaggle_tli.data import ImageCsvData\n"
        "from kaggle_tli.stages.iterate import iterate\n"
        f"data = ImageCsvData({str(data.root)!r}, image_size=32, folds=3)\n"
        f"iterate({str(run.path)!r}, 'resnet10t', data, runs={str(out)!r}, epochs=1000, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("*-resnet10t-*/log.csv")):
            assert proc.poll() is None, "iterate died before training"
            time.sleep(0.2)
        assert list(out.glob("*-resnet10t-*/log.csv")), "training never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ledger = Ledger(out)
    rows = {r["run_id"]: r for r in ledger.rows()}
    assert not ledger.problems, ledger.problems
    killed = next(r for r in rows.values() if r["stage"] == "inject")
    assert killed["status"] in ("running", "interrupted")
    assert [r["run_id"] for r in ledger.lineage(killed["run_id"])] == [killed["run_id"], run.id]
    with open(ledger.path, newline="") as f:
        widths = {len(line) for line in csv.reader(f)}
    assert len(widths) == 1, f"a torn line: rows of {widths} fields"


def test_iterate_builds_its_student_once_and_checks_it_once(teacher, monkeypatch):
    run, data, runs = teacher
    calls = {"build": 0, "check_input_size": 0}
    for module in ("kaggle_tli.stages.iterate", "kaggle_tli.stages.resume", "kaggle_tli.train.session"):
        mod = sys.modules[module]
        for name, key in (("create_model_from_spec", "build"), ("check_input_size", "check_input_size")):
            if hasattr(mod, name):
                original = getattr(mod, name)

                def counted(*args, _original=original, _key=key, **kwargs):
                    calls[_key] += 1
                    return _original(*args, **kwargs)

                monkeypatch.setattr(mod, name, counted)
    child = iterate(run, "resnet10t_silu_test", data, runs=runs, max_steps=1)
    assert child.status == "done"
    assert calls == {"build": 1, "check_input_size": 1}, f"on the way to the first step: {calls}"
