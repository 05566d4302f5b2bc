"""Data: finding files in Kaggle's shapes, folds, transforms, and errors raised before any training.

Budget: < 15 s on 2 cores (no model is trained here).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch

from kaggle_tli.data import (
    DataError,
    DataWarning,
    EpochBatchSampler,
    ImageCsvData,
    ImageDataset,
    PixelCsvData,
    rebuild_data,
)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------- shapes


def test_image_competition_is_read_with_sorted_classes_and_stratified_folds(image_competition):
    data = ImageCsvData(image_competition, image_size=32, folds=4, seed=7)
    assert data.class_names == ["one", "two", "zero"], "class names must be the sorted original labels"
    assert len(data) == 60 and data.num_classes == 3 and data.in_chans == 3
    counts = pd.crosstab(data.frame["fold"], data.frame["label"])
    assert (counts == 5).all().all(), f"every fold must hold 5 of each class (stratified):\n{counts}"
    names = np.array(data.class_names)[data.frame["target"]]
    assert (names == data.frame["label"]).all(), "target must index class_names"
    again = ImageCsvData(image_competition, image_size=32, folds=4, seed=7)
    assert (again.frame["fold"] == data.frame["fold"]).all(), "the same seed must give the same split"
    other = ImageCsvData(image_competition, image_size=32, folds=4, seed=8)
    assert not (other.frame["fold"] == data.frame["fold"]).all(), "another seed should give another split"
    sample = pd.read_csv(image_competition / "sample_submission.csv")
    assert data.test_ids == sample["id"].tolist(), "test ids come from the sample submission, in its order"
    x, y = data.test_dataset()[0]
    assert x.shape == (3, 32, 32) and y == -1


def test_ids_with_extension_in_an_images_folder_as_jpg(make_image_competition, tmp_path):
    root = make_image_competition(tmp_path / "c", id_with_ext=True, image_dir="images", ext=".jpg", test_dir="test_images")
    data = ImageCsvData(root, image_size=32)
    assert data.image_dir == root / "images", "the image folder must be auto-detected among the usual names"
    assert data.frame["path"].str.endswith(".jpg").all()
    assert len(data.test_ids) == 15 and all(Path(p).is_file() for p in data.test_paths)


def test_test_folder_listing_without_sample_submission(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    (root / "sample_submission.csv").unlink()
    data = ImageCsvData(root, image_size=32)
    assert data.test_ids == sorted(p.stem for p in (root / "test").iterdir()), "test ids from the test folder"
    assert data.sample_submission is None


def test_group_folds_keep_a_group_in_one_fold(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    table = pd.read_csv(root / "train.csv")
    table["patient"] = [f"p{i // 2}" for i in range(len(table))]  # pairs of images share a patient
    table.to_csv(root / "train.csv", index=False)
    data = ImageCsvData(root, image_size=32, group_col="patient", folds=3)
    folds_per_group = data.frame.assign(g=table["patient"]).groupby("g")["fold"].nunique()
    assert (folds_per_group == 1).all(), "StratifiedGroupKFold must never split a group across folds"


def test_pixel_csv_digit_recognizer_shape(pixel_competition):
    data = PixelCsvData(pixel_competition, image_size=32)
    assert data.image_shape == (28, 28, 1) and data.in_chans == 1
    assert data.class_names == list(range(10)) and len(data) == 100
    assert data.test_ids == [str(i) for i in range(1, 21)], "ImageId of the sample submission, as written"
    x, y = data.dataset(np.arange(4), train=False)[2]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    assert rebuild_data(data.spec()).class_names == data.class_names, "spec() must rebuild the same data"


def test_user_albumentations_pipeline_is_used(image_competition):
    mine = A.Compose([A.Resize(16, 16), A.Normalize()])
    data = ImageCsvData(image_competition, image_size=32, train_transform=mine, valid_transform=mine)
    x, _ = data.dataset(np.arange(3), train=True)[0]
    assert x.shape == (3, 16, 16), "the user's Compose must replace the default pipeline"


# ----------------------------------------------------------------------------------- determinism


def test_augmentation_depends_only_on_the_batch_seed(image_competition):
    data = ImageCsvData(image_competition, image_size=32)
    ds_a, ds_b = data.dataset(np.arange(10), train=True), data.dataset(np.arange(10), train=True)
    keys = [(i, 1234) for i in range(4)]
    a = torch.stack([x for x, _ in ds_a.__getitems__(keys)])
    ds_b.__getitems__([(i, 99) for i in range(4)])  # another batch in between changes nothing
    b = torch.stack([x for x, _ in ds_b.__getitems__(keys)])
    assert torch.equal(a, b), "the same (index, seed) keys must give identical augmented tensors"
    c = torch.stack([x for x, _ in ds_a.__getitems__([(i, 4321) for i in range(4)])])
    assert not torch.equal(a, c), "another seed must give another augmentation"


def test_epoch_batch_sampler_resumes_and_shards():
    full = list(EpochBatchSampler(np.arange(20), 4, seed=3, epoch=2))
    tail = list(EpochBatchSampler(np.arange(20), 4, seed=3, epoch=2, start_batch=2))
    assert tail == full[2:], "start_batch must continue the same epoch order"
    assert list(EpochBatchSampler(np.arange(20), 4, seed=3, epoch=3)) != full, "each epoch reshuffles"
    r0 = list(EpochBatchSampler(np.arange(20), 2, seed=3, epoch=2, rank=0, world=2))
    r1 = list(EpochBatchSampler(np.arange(20), 2, seed=3, epoch=2, rank=1, world=2))
    assert len(r0) == len(r1) == 5
    merged = [[i for i, _ in a] + [i for i, _ in b] for a, b in zip(r0, r1, strict=True)]
    assert merged == [[i for i, _ in batch] for batch in full], "two ranks split each global batch"


def test_with_folds_reuses_a_saved_split(image_competition, tmp_path):
    data = ImageCsvData(image_competition, image_size=32, seed=1)
    data.folds_frame().to_csv(tmp_path / "folds.csv", index=False)
    other = ImageCsvData(image_competition, image_size=32, seed=2).with_folds(tmp_path / "folds.csv")
    assert (other.frame["fold"] == data.frame["fold"]).all(), "with_folds must restore the saved split"


# ------------------------------------------------------------------------------------ bad inputs


def test_misnamed_column_lists_columns_and_suggests_the_closest(image_competition):
    with pytest.raises(DataError) as err:
        ImageCsvData(image_competition, label_col="labels")
    message = str(err.value)
    assert "'labels'" in message and "['id', 'label']" in message and "label_col='label'" in message, message


def test_missing_images_are_counted_and_named(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    for name in ("tr0003.png", "tr0010.png", "tr0042.png"):
        (root / "train" / name).unlink()
    with pytest.raises(DataError) as err:
        ImageCsvData(root)
    message = str(err.value)
    assert "3 of 60" in message and "'tr0003'" in message and "image_dir=" in message, message


def test_unreadable_image_is_reported(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    (root / "train" / "tr0005.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"1 training image\(s\) cannot be read .*tr0005\.png"):
        ImageCsvData(root)


def test_truncated_image_is_found_by_a_full_decode(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    path = root / "train" / "tr0007.png"
    path.write_bytes(path.read_bytes()[:40])  # a valid PNG signature, pixels cut off
    with pytest.raises(DataError, match="tr0007"):
        ImageCsvData(root, check_images="decode")


def test_class_smaller_than_folds(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    table = pd.read_csv(root / "train.csv")
    table.loc[:1, "label"] = "rare"  # two members, five folds
    table.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError) as err:
        ImageCsvData(root, folds=5)
    message = str(err.value)
    assert "'rare' (2)" in message and "folds=2" in message, message


@pytest.mark.parametrize("content, expected", [("", "is empty"), ("id,label\n", "no rows")])
def test_empty_csv(image_competition, tmp_path, content, expected):
    root = _copy(image_competition, tmp_path / "c")
    (root / "train.csv").write_text(content)
    with pytest.raises(DataError, match=expected):
        ImageCsvData(root)


def test_missing_csv_and_folder(image_competition, tmp_path):
    with pytest.raises(DataError, match="train.csv"):
        ImageCsvData(image_competition, csv="trian.csv")
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        ImageCsvData(tmp_path / "nowhere")
    assert isinstance(err.value, DataError), "a missing folder is a DataError and a FileNotFoundError"


def test_pixel_columns_that_are_not_square(pixel_competition, tmp_path):
    root = _copy(pixel_competition, tmp_path / "p")
    table = pd.read_csv(root / "train.csv").drop(columns=["pixel0"])
    table.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match="783 pixel columns.*image_shape"):
        PixelCsvData(root)


# ------------------------------------------------------------------- text that looks like numbers


def test_numeric_looking_ids_and_classes_are_kept_as_written(numeric_competition, tmp_path):
    data = ImageCsvData(numeric_competition, image_size=32)
    assert data.frame["id"].iloc[:3].tolist() == ["0000", "0001", "0002"], "id '0001' must not become 1"
    assert data.class_names == ["01", "10", "2"], "classes '01'/'10' are text, not the numbers 1 and 10"
    assert sorted(set(data.frame["label"])) == ["01", "10", "2"]
    assert data.test_ids[:2] == ["0000", "0001"], "test ids come from the sample submission as written"
    assert data.sample_submission.iloc[0, 0] == "0000"
    data.folds_frame().to_csv(tmp_path / "folds.csv", index=False)
    again = ImageCsvData(numeric_competition, image_size=32, seed=5).with_folds(tmp_path / "folds.csv")
    assert (again.frame["fold"] == data.frame["fold"]).all(), "a saved split with ids like '0001' must reload"


def test_integer_labels_stay_integers_and_test_csv_ids_stay_text(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    (root / "sample_submission.csv").unlink()
    table = pd.read_csv(root / "train.csv")
    table["label"] = table["label"].map({"zero": 0, "one": 1, "two": 2})
    table.to_csv(root / "train.csv", index=False)
    ids = sorted(p.stem for p in (root / "test").iterdir())
    for i, name in enumerate(ids):
        (root / "test" / f"{name}.png").rename(root / "test" / f"{i:04d}.png")
    pd.DataFrame({"id": [f"{i:04d}" for i in range(len(ids))]}).to_csv(root / "test.csv", index=False)
    data = ImageCsvData(root, image_size=32, test_csv="test.csv")
    assert data.class_names == [0, 1, 2], "labels written as plain integers are integer classes"
    assert data.test_ids[:2] == ["0000", "0001"], "ids of test_csv are read as written"


# ------------------------------------------------------------------------------ malformed files


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"id,label\ntr0000,zero\ntr0001,zero,x,y\n", r"not a well-formed CSV.*line 3"),
        (b"id,label\n\xff\xfe\xfa,\x80zero\n", r"not UTF-8"),
    ],
    ids=["extra-fields", "not-utf8"],
)
def test_malformed_csv_is_a_data_error_naming_the_file(image_competition, tmp_path, content, expected):
    root = _copy(image_competition, tmp_path / "c")
    (root / "train.csv").write_bytes(content)
    with pytest.raises(DataError, match=expected) as err:
        ImageCsvData(root)
    assert "train.csv" in str(err.value), f"the message must name the file: {err.value}"


def test_a_class_with_one_member_must_be_dropped_or_merged(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    table = pd.read_csv(root / "train.csv")
    table.loc[0, "label"] = "lonely"
    table.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError) as err:
        ImageCsvData(root, folds=5)
    message = str(err.value)
    assert "'lonely'" in message and "drop" in message and "merge" in message, message
    assert "folds=" not in message, f"no folds value can split a single member, none may be suggested: {message}"


# ------------------------------------------------------------------- failures after construction


def test_an_image_that_breaks_mid_epoch_names_the_full_decode_check(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    path = root / "train" / "tr0007.png"
    path.write_bytes(path.read_bytes()[:40])  # what the sampled default check can miss
    data = ImageCsvData(root, image_size=32, check_images="none")
    row = int(np.flatnonzero(data.frame["id"] == "tr0007")[0])
    with pytest.raises(DataError) as err:
        data.dataset(np.array([row]), train=True)[0]
    message = str(err.value)
    assert "tr0007.png" in message and "check_images='decode'" in message, message
    with pytest.raises(DataError, match="tr0007"):  # the option the message names exists and finds the file
        ImageCsvData(root, check_images="decode")


def test_an_image_deleted_after_the_check_is_reported_missing_not_corrupt(tmp_path):
    dataset = ImageDataset([str(tmp_path / "gone.png")], np.zeros(1), None)
    with pytest.raises(DataError) as err:
        dataset.load(0)
    message = str(err.value)
    assert "gone.png" in message and "is missing" in message and "corrupt" not in message, message


def test_a_missing_test_image_warns_and_fails_only_when_predicting(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    (root / "test" / "te0003.png").unlink()
    with pytest.warns(DataWarning, match=r"1 of 15 test images are missing .*test_dir=") as caught:
        data = ImageCsvData(root, image_size=32)
    assert "image_dir=" not in str(caught[0].message), f"the test set's option is test_dir=: {caught[0].message}"
    x, _ = data.dataset(np.arange(2), train=True)[0]  # training is not blocked
    assert x.shape == (3, 32, 32)
    assert data.has_test, "a broken test set must reach test_dataset(), which says what is wrong"
    with pytest.raises(DataError, match=r"'te0003'.*test_dir="):
        data.test_dataset()


def test_no_test_images_at_all_does_not_block_training(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    shutil.rmtree(root / "test")
    (root / "sample_submission.csv").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        data = ImageCsvData(root, image_size=32)
    assert len(data) == 60 and not data.has_test


# ------------------------------------------------------------------------- messages that point


def test_an_empty_id_is_reported_with_its_csv_line(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    table = pd.read_csv(root / "train.csv")
    table.loc[4, "id"] = None  # the 5th data row: line 6 of the file
    table.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError) as err:
        ImageCsvData(root)
    message = str(err.value)
    assert "empty 'id'" in message and "line 6" in message and "missing" not in message, message


def test_an_empty_label_is_reported_with_its_csv_line(image_competition, tmp_path):
    root = _copy(image_competition, tmp_path / "c")
    table = pd.read_csv(root / "train.csv")
    table.loc[9, "label"] = None
    table.to_csv(root / "train.csv", index=False)
    line = (root / "train.csv").read_text().splitlines()[10]
    assert line.endswith(","), f"line 11 must be the row without a label: {line!r}"
    with pytest.raises(DataError, match=r"no 'label' value, on CSV line 11 \(the header is line 1\)"):
        ImageCsvData(root)


@pytest.mark.parametrize("size", [0, -3, (32, 0), (32,), 32.5])
def test_a_size_no_image_can_have_is_refused_at_construction(image_competition, pixel_competition, size):
    with pytest.raises(DataError, match=r"image_size=.*positive"):
        ImageCsvData(image_competition, image_size=size)
    with pytest.raises(DataError, match=r"image_size=.*positive"):
        PixelCsvData(pixel_competition, image_size=size)


# ------------------------------------------------------------------------------ rebuilding a spec


def test_spec_root_is_absolute_so_a_run_rebuilds_from_another_directory(image_competition, tmp_path, monkeypatch):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    relative = os.path.relpath(image_competition, here)
    data = ImageCsvData(relative, image_size=32)
    spec = data.spec()
    assert spec["root"] == str(Path(image_competition).resolve()), f"root must be absolute: {spec['root']}"
    monkeypatch.chdir(elsewhere)
    assert len(rebuild_data(spec)) == len(data), "the spec must rebuild from any working directory"
    monkeypatch.chdir(here)
    old = {**spec, "root": relative}  # a run.json written before roots were absolute
    assert len(rebuild_data(old)) == len(data), "an old relative root must load as before"


def test_rebuilding_custom_transforms_warns_and_names_the_fix(image_competition):
    mine = A.Compose([A.Resize(16, 16), A.Normalize()])
    spec = ImageCsvData(image_competition, image_size=32, train_transform=mine).spec()
    assert spec["custom_transforms"] is True
    with pytest.warns(DataWarning, match=r"cannot store.*iterate\(prev_run, arch, data=data\)"):
        rebuilt = rebuild_data(spec)
    assert rebuilt.dataset(np.arange(1), train=True)[0][0].shape == (3, 32, 32), "defaults at the run's size"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        rebuild_data(ImageCsvData(image_competition, image_size=32).spec())
