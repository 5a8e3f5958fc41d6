import keras
import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import augment, data


def _photo_patches(count=8, size=32):
    """RGB images made from the shipped Fashion-MNIST photos with a per-image colour tint."""
    images, _ = data.load_shipped("train")
    gray = images[:count].astype("float32") / 255.0
    tints = np.random.default_rng(0).uniform(0.3, 1.0, size=(count, 1, 1, 3)).astype("float32")
    rgb = tf.image.resize(gray, (size, size)).numpy() * tints
    return rgb


def test_random_resized_crop_box_size_and_aspect():
    """On a horizontal ramp (value = x coordinate) a crop's value span is its width."""
    size = 65
    ramp = np.tile(np.linspace(0, 1, size, dtype="float32")[None, None, :, None], (200, size, 1, 1))
    crop = augment.RandomResizedCrop(size, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    out = crop(ramp, training=True).numpy()
    spans = out[:, 0, -1, 0] - out[:, 0, 0, 0]  # area 0.25, ratio 1 → half the width
    np.testing.assert_allclose(spans, 0.5, atol=0.02)
    assert out[:, 0, 0, 0].std() > 0.05, "the crops must sit at different places"
    wide = augment.RandomResizedCrop(size, scale=(0.25, 0.25), ratio=(4.0, 4.0))(ramp, training=True).numpy()
    np.testing.assert_allclose(wide[:, 0, -1, 0] - wide[:, 0, 0, 0], 1.0, atol=0.02)  # sqrt(0.25·4) = 1


def test_views_are_independent_and_in_range():
    images = _photo_patches()
    pipeline = augment.view_augmenter(32, channels=3, preset="abcde")
    view1, view2 = pipeline(images, training=True), pipeline(images, training=True)
    assert view1.shape == (8, 32, 32, 3)
    assert not np.allclose(view1, view2)
    assert float(tf.reduce_min(view1)) >= -1e-6 and float(tf.reduce_max(view1)) <= 1 + 1e-6


def test_grayscale_input_pipeline_keeps_one_channel():
    images = data.to_float_images(data.load_shipped("test")[0][:4])
    out = augment.view_augmenter(28, channels=1, preset="simclr")(images, training=True)
    assert out.shape == (4, 28, 28, 1)


@pytest.mark.parametrize("preset,expected", [("a", "a"), ("cba", "abc"), ("simclr", "abcde")])
def test_presets(preset, expected):
    assert augment.parse_preset(preset) == expected


@pytest.mark.parametrize("preset", ["", "xyz", "bc", 3])
def test_bad_presets_are_explained(preset):
    with pytest.raises(ValueError, match="abcde"):
        augment.parse_preset(preset)


def test_random_apply_rate_zero_and_one():
    images = _photo_patches(4)
    flip = keras.layers.RandomFlip("horizontal")
    np.testing.assert_array_equal(augment.RandomApply(flip, rate=0.0)(images), images)
    always = augment.RandomApply(keras.layers.Lambda(lambda x: 1.0 - x), rate=1.0)(images)
    np.testing.assert_allclose(always, 1.0 - images)
