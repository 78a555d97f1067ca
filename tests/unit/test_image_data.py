"""Image data: the built-in sets split by source, and --data DIR folders."""
from pathlib import Path

import numpy as np
import pytest

from reactinfer.core.errors import UserError
from reactinfer.core.images import ImagePreprocess
from reactinfer.data import builtin_images, read_image_dir, texts_for
from reactinfer.data.images import VIEWS, digits_split, load_digits, views


def test_photos_split_by_source_photo_never_by_crop():
    cal, ev = builtin_images("photos", "calibration"), builtin_images("photos", "eval")
    cal_src, ev_src = {it.source for it in cal}, {it.source for it in ev}
    assert not cal_src & ev_src  # no photo has crops on both sides
    assert len(cal_src) + len(ev_src) == 26
    assert len(cal) == len(cal_src) * len(VIEWS) and len(ev) == len(ev_src) * len(VIEWS)
    assert len(ev) >= 50  # enough for quality figures the report trusts
    assert all(it.image.dtype == np.uint8 and it.image.ndim == 3 for it in ev)


def test_views_are_whole_flip_and_corner_crops():
    img = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    v = views(img)
    assert len(v) == len(VIEWS) and v[0] is img
    np.testing.assert_array_equal(v[1], img[:, ::-1])
    assert all(c.shape == (6, 12, 3) for c in v[2:])
    np.testing.assert_array_equal(v[5], img[4:, 8:])


def test_digits_seeded_split_is_disjoint_and_labelled():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 255
    split = digits_split()
    assert len(split["eval"]) == 360 and len(split["train"]) == 1437
    assert not set(split["eval"]) & set(split["train"])
    np.testing.assert_array_equal(digits_split()["eval"], split["eval"])  # seeded
    ev = builtin_images("digits", "eval")
    assert [it.label for it in ev] == labels[split["eval"]].tolist()
    assert len(set(labels[split["eval"]])) == 10


def _png(path: Path, shade: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), shade, np.uint8)).save(path)


def test_data_dir_with_class_subfolders_skips_non_images(tmp_path, capsys):
    for i in range(3):
        _png(tmp_path / "cat" / f"c{i}.png", 10 * i)
        _png(tmp_path / "dog" / f"d{i}.png", 100 + 10 * i)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    items, skipped = read_image_dir(tmp_path)
    assert skipped == 2 and len(items) == 6
    assert sorted((it.source, it.label) for it in items)[0] == ("cat/c0.png", 0)
    assert {it.label for it in items if it.source.startswith("dog")} == {1}
    pre = ImagePreprocess(size=4, resize=None)
    ev = texts_for("eval", str(tmp_path), preprocess=pre)
    assert ev and all(it.label in (0, 1) for it in ev)
    assert "skipped 2 non-image file(s)" in capsys.readouterr().err


def test_flat_data_dir_has_no_labels(tmp_path):
    _png(tmp_path / "a.png", 1)
    _png(tmp_path / "deep" / "er" / "b.png", 2)  # not one class folder per image: no labels
    items, skipped = read_image_dir(tmp_path)
    assert skipped == 0 and [it.label for it in items] == [None, None]


def test_empty_or_missing_image_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no images in"):
        read_image_dir(tmp_path)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(UserError, match=r"no images in .*1 other file"):
        read_image_dir(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        read_image_dir(tmp_path / "nope")
    with pytest.raises(UserError, match="is a file"):
        read_image_dir(tmp_path / "readme.txt")
    with pytest.raises(UserError, match="unknown built-in image set"):
        builtin_images("cifar", "eval")


def test_cli_bench_on_an_empty_image_folder_is_one_line_and_exit_2(tmp_path, capsys):
    from reactinfer.cli.main import main

    assert main(["bench", "resnet18-digits", "--data", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no images in" in err and len(err.splitlines()) == 1
