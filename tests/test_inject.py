"""Stage 3 above the engine: teachers given as runs, run directories and weight files."""

import pytest
import torch

from kaggle_tli import models as registry
from kaggle_tli.checkpoint import save_weights
from kaggle_tli.runs import write_run_info
from kaggle_tli.stages.inject import inject, load_teacher, rank_teachers, transfer


def _fake_run(root, arch="resnet10t", num_classes=3, seed=0):
    """A run directory in the documented format, without training (the engine does not care how weights came)."""
    torch.manual_seed(seed)
    spec = registry.arch_spec(arch, num_classes=num_classes)
    model = registry.create_model_from_spec(spec).eval()
    run_dir = root / f"run-{arch}-{seed}"
    run_dir.mkdir()
    save_weights(model.state_dict(), run_dir / "model.safetensors", {"arch": arch, "num_classes": num_classes})
    write_run_info(run_dir, {"schema": 1, "id": run_dir.name, "arch": spec, "num_classes": num_classes,
                             "status": "done", "stage": "finetune"})
    return run_dir, model


def _same_logits(a, b) -> bool:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-6)


def test_teacher_from_run_directory_and_from_weights_file(tmp_path):
    run_dir, model = _fake_run(tmp_path)
    for source in (run_dir, str(run_dir), run_dir / "model.safetensors"):
        assert _same_logits(load_teacher(source), model), f"teacher rebuilt from {source!r} differs"


def test_transfer_accepts_a_run_and_inject_builds_the_new_architecture(tmp_path):
    run_dir, teacher = _fake_run(tmp_path)
    student = registry.create_model("resnet10t", num_classes=3)
    report = transfer(run_dir, student)
    assert report.coverage == 1.0 and _same_logits(student, teacher)
    new, report, spec = inject(run_dir, "resnet18")
    assert spec["name"] == "resnet18" and spec["num_classes"] == 3
    assert report.coverage > 0.5 and new.fc.out_features == 3


def test_weights_file_without_architecture_is_explained(tmp_path):
    path = tmp_path / "loose.safetensors"
    save_weights({"w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="does not say which architecture"):
        load_teacher(path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_teacher(bad)
    with pytest.raises(FileNotFoundError, match="no run"):
        load_teacher(tmp_path / "missing-run")


def test_rank_teachers_takes_runs_and_names_them(tmp_path):
    same, _ = _fake_run(tmp_path, "resnet10t")
    other, _ = _fake_run(tmp_path, "mobilenetv3_small_050")
    student = registry.create_model("resnet10t", num_classes=3)
    ranked = rank_teachers(student, [other, same], input_size=(3, 32, 32))
    assert list(ranked["teacher"]) == [str(same), str(other)], ranked
    assert rank_teachers(student, {"run": same}, input_size=(3, 32, 32))["tli_score"].iloc[0] == 1.0
