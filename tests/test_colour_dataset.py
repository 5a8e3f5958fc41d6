"""The shipped colour dataset `tuxpaint_stamps` (scripts/build_tuxpaint_stamps.py): loadable by name like
`fashion_mnist_subset`, real colour objects, every class in every split, nothing shared between splits."""

import fnmatch
import pathlib
import tomllib

import numpy as np
import pytest

from amcl_keras import config as config_lib, data

NAME = "tuxpaint_stamps"
SPLITS = ("train", "val", "test")
ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def splits():
    return {split: data.load_shipped(split, NAME) for split in SPLITS}


def test_loads_by_name_with_shapes_and_dtypes(splits):
    minimum = {"train": 5000, "val": 1000, "test": 1000}
    for split, (images, labels) in splits.items():
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3), split
        assert labels.dtype == np.int64 and labels.shape == (len(images),), split
        assert len(images) >= minimum[split], split
    # the generic paths (what data.dataset in a config goes through) give the same arrays
    images, labels = data.labelled_arrays(NAME, "val")
    np.testing.assert_array_equal(images, splits["val"][0])
    dataset = data.load(NAME, "test")
    assert tuple(dataset.element_spec[0].shape) == (32, 32, 3) and int(dataset.cardinality()) == len(splits["test"][0])
    first_image, first_label = next(iter(dataset.as_numpy_iterator()))
    np.testing.assert_array_equal(first_image, splits["test"][0][0])
    assert first_label == splits["test"][1][0]


def test_every_class_in_every_split_and_named(splits):
    names = data.shipped_class_names(NAME)
    assert 6 <= len(names) <= 10 and len(set(names)) == len(names)
    for split, (_, labels) in splits.items():
        counts = np.bincount(labels, minlength=len(names))
        assert len(counts) == len(names) and counts.min() > 0, (split, counts)



def test_fashion_mnist_classes_are_named_as_its_notice_lists_them():
    notice = (pathlib.Path(data.__file__).parent / "data" / "LICENSE-fashion-mnist.txt").read_text()
    listed = " ".join(notice.split("Class names, in label order:")[1].split(".")[0].split())
    assert data.shipped_class_names("fashion_mnist_subset") == [n.strip() for n in listed.split(",")]


def test_real_colour_objects_not_blank_or_grey(splits):
    for split, (images, _) in splits.items():
        pixels = images.astype(np.float64)
        assert 60 < pixels.mean() < 200 and pixels.std() > 30, split  # not black / blank squares
        per_image_std = pixels.std(axis=(1, 2, 3))
        assert np.mean(per_image_std > 10) > 0.95, split  # almost every image has content
        # colour: the channels differ, on average and in most images
        channel_gap = np.abs(pixels - pixels.mean(-1, keepdims=True)).mean(-1)
        assert channel_gap.mean() > 8, split
        assert np.mean(channel_gap.mean(axis=(1, 2)) > 5) > 0.5, split
        for a, b in ((0, 1), (1, 2), (0, 2)):
            assert np.abs(pixels[..., a] - pixels[..., b]).mean() > 8, (split, a, b)
        # photographs, not noise: neighbouring pixels are strongly correlated
        left, right = pixels[:500, :, :-1].ravel(), pixels[:500, :, 1:].ravel()
        assert np.corrcoef(left, right)[0, 1] > 0.8, split


def test_splits_share_no_image(splits):
    keys = {split: {image.tobytes() for image in images} for split, (images, _) in splits.items()}
    for split, (images, _) in splits.items():
        assert len(keys[split]) == len(images), f"identical images within {split}"
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]


def test_bad_split_names_the_splits():
    with pytest.raises(ValueError, match="'train', 'val' and 'test'"):
        data.load_shipped("validation", NAME)
    with pytest.raises(ValueError, match="tuxpaint_stamps"):
        data.load_shipped("train", "no_such_shipped_dataset")


def test_ships_as_package_data_with_its_licence():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["amcl_keras"]
    for name in ("tuxpaint_stamps.npz", "LICENSE-tuxpaint-stamps.txt"):
        assert (ROOT / "amcl_keras" / "data" / name).is_file()
        assert any(fnmatch.fnmatch(f"data/{name}", pattern) for pattern in globs), name
    notice = (ROOT / "amcl_keras" / "data" / "LICENSE-tuxpaint-stamps.txt").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in notice and "tuxpaint-stamps-default" in notice
    assert all(name in notice for name in data.shipped_class_names(NAME))


def test_a_config_names_it_and_evaluates_on_val():
    from amcl_keras import train

    config = config_lib.load(None, [f"data.dataset={NAME}", "data.eval_test_split=val", "data.batch_size=512"])
    assert config.data.dataset == NAME and config.data.eval_test_split == "val"
    loaded = train.load_data(config)
    assert loaded.input_shape == (32, 32, 3)
    assert loaded.steps_per_epoch == len(data.load_shipped("train", NAME)[0]) // 512
    view1, view2 = next(iter(loaded.views))
    assert view1.shape == (512, 32, 32, 3) and not np.allclose(view1, view2)
    val_images, val_labels = data.load_shipped("val", NAME)
    test_images, test_labels = loaded.test_split
    assert len(test_images) == min(len(val_images), config.eval.max_examples or len(val_images))
    np.testing.assert_array_equal(test_labels, val_labels[: len(test_labels)])
