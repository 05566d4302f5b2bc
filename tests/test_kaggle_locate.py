"""find_inputs: bundles and competition folders are found by marker, whatever Kaggle's mount layout."""

import os

import pytest

from kaggle_tli.kaggle.locate import BUNDLE_MARKER, find_bundles, find_competition, find_inputs


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return path.parent


@pytest.mark.parametrize(
    "layout",
    ["my-weights", "datasets/alice/my-weights", "datasets/alice/my-weights/versions/3", "competitions/x/../my-weights",
     "tli-digits/pytorch/resnet18/1", "models/alice/tli-digits/pytorch/resnet18/1"],  # Kaggle Models, old and new
)
def test_bundle_found_in_every_mount_layout(tmp_path, layout):
    where = _touch(tmp_path / layout / BUNDLE_MARKER)
    found = find_bundles(tmp_path)
    assert [p.resolve() for p in found] == [where.resolve()], f"layout {layout}: found {found}"


def test_competition_and_bundles_side_by_side(tmp_path):
    comp = _touch(tmp_path / "competitions" / "digits" / "sample_submission.csv")
    (comp / "train").mkdir()
    _touch(comp / "train" / "extra" / "train.csv")  # below a match: never visited (image folders are huge)
    b1 = _touch(tmp_path / "datasets" / "alice" / "w1" / BUNDLE_MARKER)
    b2 = _touch(tmp_path / "w2" / BUNDLE_MARKER)
    (b2 / "train.csv").write_text("id,label\n")  # a bundle with a train.csv is still no competition
    assert find_bundles(tmp_path) == sorted([b1, b2]), "both bundles, nothing under the competition folder"
    assert find_competition(tmp_path) == comp, "the competition folder, not the bundle holding a train.csv"
    assert find_competition(tmp_path, slug="digits") == comp


def test_several_competitions_need_a_slug(tmp_path):
    _touch(tmp_path / "a-comp" / "train.csv")
    _touch(tmp_path / "competitions" / "b-comp" / "sample_submission.csv")
    with pytest.raises(ValueError, match="slug="):
        find_competition(tmp_path)
    assert find_competition(tmp_path, slug="b-comp").name == "b-comp"
    with pytest.raises(FileNotFoundError, match="Add Input"):
        find_competition(tmp_path, slug="c-comp")


def test_symlink_cycles_and_depth_limit(tmp_path):
    mount = tmp_path / "datasets" / "alice"
    mount.mkdir(parents=True)
    os.symlink(tmp_path, mount / "loop")  # a cycle back to the root
    linked = _touch(tmp_path / "real" / "w" / BUNDLE_MARKER)
    os.symlink(linked, tmp_path / "w-link")  # the same bundle through a link: reported once
    found = find_bundles(tmp_path)
    assert len(found) == 1 and found[0].resolve() == linked.resolve(), f"one bundle, no cycle: {found}"
    _touch(tmp_path / "a" / "b" / "c" / "d" / "e" / "f" / "g" / BUNDLE_MARKER)
    assert len(find_inputs(root=tmp_path, max_depth=7)) == 2, "max_depth 7 reaches the deep bundle"
    assert len(find_inputs(root=tmp_path)) == 1, "the default depth stops above it"


def test_missing_root_and_bad_marker(tmp_path):
    assert find_inputs(root=tmp_path / "absent") == [], "a notebook without inputs has none"
    with pytest.raises(ValueError, match="marker"):
        find_inputs(marker=[], root=tmp_path)
