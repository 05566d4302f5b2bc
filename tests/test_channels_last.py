"""channels_last: which models take it, and a run trained in it saves, resumes and predicts like any other.

Budget: about 5 s (resnet10t and a mobilenet at 32 px, two steps).
"""

from __future__ import annotations

import pytest
import timm
import torch

from kaggle_tli.bench.layout import layout_step_times
from kaggle_tli.data import ImageCsvData
from kaggle_tli.models import memory_format, wants_channels_last
from kaggle_tli.stages import finetune, predict
from kaggle_tli.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auto_takes_cnns_on_cuda_and_depthwise_cnns_on_the_cpu():
    resnet = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    mobile = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=4)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8)
    assert [wants_channels_last(m, "auto", "cpu") for m in (resnet, mobile, vit)] == [False, True, False]
    assert [wants_channels_last(m, "auto", "cuda") for m in (resnet, mobile, vit)] == [True, True, False]
    assert wants_channels_last(vit, True, "cpu") and not wants_channels_last(mobile, False, "cuda"), "as given"
    x = torch.randn(2, 3, 32, 32)
    before = mobile.eval()(x)
    assert memory_format(mobile, "auto", "cpu") == torch.channels_last
    assert mobile.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(mobile(x.to(memory_format=torch.channels_last)), before, atol=1e-5), "same function"
    with pytest.raises(ValueError, match="channels_last='yes'"):
        TrainConfig(channels_last="yes")


def test_a_run_trained_channels_last_saves_and_predicts_like_any_other(make_image_competition, tmp_path):
    root = make_image_competition(tmp_path / "comp", digits=(0, 1), per_class=8, n_test_per_class=2)
    data = ImageCsvData(root, image_size=32, folds=2)
    run = finetune("resnet10t", data, runs=tmp_path / "runs", max_steps=2, batch_size=8, progress=False,
                   channels_last=True, eval_norms="running")
    model = run.build_model()  # weights saved contiguous: a plain model loads them strictly
    assert model.conv1[0].weight.is_contiguous()
    submission = predict(run, out=tmp_path / "submission.csv")
    assert len(submission) == 4 and submission.columns[0] == "id"


def test_the_layout_benchmark_times_both_layouts():
    row = layout_step_times("resnet10t", image_size=16, batch_size=4, steps=1, device="cpu")
    assert row["nchw_ms"] > 0 and row["channels_last_ms"] > 0
    assert row["ratio"] == pytest.approx(row["channels_last_ms"] / row["nchw_ms"])
