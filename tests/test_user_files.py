"""Files as users have them: 16-bit PNGs, the resize cache over real image files, a truncated weights file.

Budget: about 5 s on 2 cores (one resnet10t run of two steps at 32 px; the rest is file work).
"""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from kaggle_tli.cli import main
from kaggle_tli.data import ImageCsvData, ImageDataset, ResizeCache
from kaggle_tli.stages import finetune


def _write(path, image) -> str:
    assert cv2.imwrite(str(path), image), path
    return str(path)


@pytest.mark.parametrize("cached", [False, True])
def test_a_16_bit_png_decodes_to_its_brightness(tmp_path, cached):
    grey16 = np.full((48, 64), 40000, np.uint16)  # 61% of full scale
    rgb16 = np.dstack([np.full((48, 64), v, np.uint16) for v in (10000, 30000, 60000)])  # BGR on disk
    paths = [_write(tmp_path / "grey.png", grey16), _write(tmp_path / "rgb.png", rgb16)]
    cache = ResizeCache(tmp_path / "cache", 16, 3) if cached else None
    images = ImageDataset(paths, np.zeros(2), transform=None, cache=cache)
    grey, rgb = images[0][0], images[1][0]
    assert grey.mean().item() == pytest.approx(40000 / 65535, abs=2 / 255), "16 bits scaled, not clipped or wrapped"
    got = [rgb[c].mean().item() for c in range(3)]
    assert got == pytest.approx([60000 / 65535, 30000 / 65535, 10000 / 65535], abs=2 / 255), got


def test_the_resize_cache_decodes_once_and_follows_the_source(make_image_competition, tmp_path, monkeypatch):
    root = make_image_competition(tmp_path / "comp", digits=(0, 1), per_class=10, n_test_per_class=2, size=64)
    data = ImageCsvData(root, image_size=32, folds=2, cache="resized", cache_dir=tmp_path / "cache")
    train = data.dataset(np.arange(len(data)), train=False)
    first = [train.load(i) for i in range(len(train))]
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == len(data) and first[0].shape == (40, 40, 3), "one file each, shrunk to 1.25 x 32 px"

    def no_decode(path, reduce=1):
        raise AssertionError(f"{path} was decoded again although it is cached")

    monkeypatch.setattr(train, "decode", no_decode)
    assert all(np.array_equal(a, train.load(i)) for i, a in enumerate(first)), "later epochs read the cache"
    monkeypatch.undo()
    source = train.paths[0]
    _write(source, np.full((64, 64, 3), 255, np.uint8))  # the original changes: its cached copy must not be used
    assert train.load(0).min() == 255, "a changed source is decoded again"
    bigger = ImageCsvData(root, image_size=48, folds=2, cache="resized", cache_dir=tmp_path / "cache")
    assert bigger.dataset(np.arange(1), train=False).load(0).shape == (60, 60, 3), "another size, another copy"
    with pytest.raises(ValueError, match="cache='resized'"):
        ImageCsvData(root, image_size=32, folds=2, cache="yes")


def test_the_cache_decodes_large_jpegs_reduced_to_nearly_the_same_pixels(tmp_path):
    smooth = cv2.resize(np.random.default_rng(0).uniform(0, 255, (6, 6, 3)).astype(np.float32), (1024, 768),
                        interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    jpeg, png = _write(tmp_path / "big.jpg", smooth), _write(tmp_path / "big.png", smooth)
    cache = ResizeCache(tmp_path / "cache", 64, 3)  # copies with an 80-px shorter side
    assert (cache.reduction(jpeg), cache.reduction(png)) == (8, 1), "768 // 8 = 96 px still covers 80"
    images = ImageDataset([jpeg], np.zeros(1), transform=None, cache=cache)
    reduced = images.load(0)
    full = cache.shrink(images.decode(jpeg))
    assert reduced.shape == full.shape == (80, 107, 3)
    assert np.abs(reduced.astype(int) - full).mean() < 2, "DCT-scaled decode + area resize ~ full decode + area"


def test_without_the_cache_the_loader_decodes_jpegs_reduced_unless_the_transforms_are_the_users(tmp_path):
    (tmp_path / "train").mkdir()
    big = np.full((768, 1024, 3), 128, np.uint8)
    for name in ("a.jpg", "b.png", "c.jpg", "d.png"):
        _write(tmp_path / "train" / name, big)
    (tmp_path / "train.csv").write_text("id,label\na.jpg,0\nb.png,0\nc.jpg,1\nd.png,1\n")
    default = ImageCsvData(tmp_path, image_size=64, folds=2, check_images="none").dataset([0, 1], train=True)
    assert [default.load(i).shape for i in (0, 1)] == [(96, 128, 3), (768, 1024, 3)], \
        "the JPEG opens at 1/8 (96 px covers the cache's 80), the PNG whole"
    own = ImageCsvData(tmp_path, image_size=64, folds=2, check_images="none", train_transform=lambda image: {
        "image": image})
    assert own.dataset([0], train=True).load(0).shape == (768, 1024, 3), "custom transforms get every pixel"


@pytest.fixture(scope="module")
def small_run(make_image_competition, tmp_path_factory, one_thread):
    root = make_image_competition(tmp_path_factory.mktemp("comp"), digits=(0, 1), per_class=10)
    data = ImageCsvData(root, image_size=32, folds=2)
    return finetune("resnet10t", data, runs=tmp_path_factory.mktemp("runs"), epochs=1, max_steps=2, batch_size=8,
                    progress=False)


def test_a_truncated_safetensors_in_a_run_is_reported_with_the_fix(small_run, tmp_path, capsys):
    copy = shutil.copytree(small_run.path, tmp_path / small_run.id)
    weights = copy / "model_best.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an upload cut short
    assert main(["predict", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "model_best.safetensors" in err and "truncated" in err and "Copy it again" in err, err
    assert "Traceback" not in err
