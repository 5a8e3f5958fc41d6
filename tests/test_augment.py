import keras
import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import augment, data


def _photo_patches(count=8, size=32):
    """Real colour photos (the shipped public-domain/CC0 samples), as float batches in [0, 1]."""
    photos = data.load_rgb_samples().astype("float32") / 255.0
    return tf.image.resize(np.resize(photos, (count,) + photos.shape[1:]), (size, size)).numpy()


def _rate_changed(layer, images, repeats=40):
    """Fraction of images the layer changed, over `repeats` independent draws."""
    changed = []
    for _ in range(repeats):
        out = np.asarray(layer(images, training=True))
        changed.append(np.abs(out - images).reshape(len(images), -1).max(axis=1) > 1e-4)
    return float(np.mean(changed))


@pytest.mark.parametrize("letter,rate", [("b", 0.5), ("d", 0.8), ("e", 0.5), ("f", 0.2)])
def test_family_application_rates_match_their_parameters(letter, rate):
    images = _photo_patches(50, 32)  # 2,000 draws per family
    measured = _rate_changed(augment.family_layer(letter, 32, 3), images)
    assert abs(measured - rate) < 0.05, f"family {letter}: applied to {measured:.3f} of images, expected {rate}"


def test_grayscale_rate_on_colour_photos():
    images = _photo_patches(50, 32)
    layer = augment.family_layer("c", 32, 3)
    gray = []
    for _ in range(40):
        out = np.asarray(layer(images, training=True))
        gray.append(np.ptp(out, axis=-1).reshape(len(images), -1).max(axis=1) < 1e-5)
    assert abs(float(np.mean(gray)) - 0.2) < 0.04
    assert np.ptp(images, axis=-1).max() > 0.1, "the photos themselves are in colour"


def test_colour_jitter_changes_colour_on_rgb_photos():
    images = _photo_patches(20, 32)
    jitter = keras.layers.RandomColorJitter(value_range=(0, 1), saturation_factor=0.4, hue_factor=0.1)
    out = np.asarray(jitter(images, training=True))
    mean_hue_shift = np.abs(tf.image.rgb_to_hsv(out)[..., 0] - tf.image.rgb_to_hsv(images)[..., 0]).mean()
    assert mean_hue_shift > 0.005


def test_colour_families_are_left_out_on_one_channel():
    assert augment.family_layer("c", 28, channels=1) is None
    pipeline = augment.view_augmenter(28, channels=1, preset="abcdef")
    assert [layer.name for layer in pipeline.layers] == [
        "a_random_resized_crop", "e_flip", "d_colour_jitter", "b_gaussian_blur", "f_solarization"
    ]


@pytest.mark.parametrize("preset", ["a", "abc", "abcde", "simclr", "strong", "ae", "abcdef"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_preset_builds_and_runs(preset, channels):
    images = _photo_patches(4, 32) if channels == 3 else data.to_float_images(data.load_shipped("test")[0][:4])
    size = 32 if channels == 3 else 28
    out = augment.view_augmenter(size, channels, preset)(images, training=True)
    assert out.shape == (4, size, size, channels)


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


@pytest.mark.parametrize("preset,expected", [("a", "a"), ("cba", "abc"), ("simclr", "abcde"), ("strong", "abcdef")])
def test_presets(preset, expected):
    assert augment.parse_preset(preset) == expected


@pytest.mark.parametrize("preset", ["", "xyz", "bc", "abz", 3])
def test_bad_presets_are_explained(preset):
    with pytest.raises(ValueError, match="abcde"):
        augment.parse_preset(preset)


def test_random_apply_rate_zero_and_one():
    images = _photo_patches(4)
    flip = keras.layers.RandomFlip("horizontal")
    np.testing.assert_array_equal(augment.RandomApply(flip, rate=0.0)(images), images)
    always = augment.RandomApply(keras.layers.Lambda(lambda x: 1.0 - x), rate=1.0)(images)
    np.testing.assert_allclose(always, 1.0 - images)


def test_augment_preview_writes_a_png_grid(tmp_path, capsys):
    from PIL import Image

    from amcl_keras import cli

    out = tmp_path / "preview.png"
    assert cli.main(["augment-preview", "--rgb-samples", "--count", "3", "--out", str(out), "--preset", "strong",
                     "--set", "data.image_size=64"]) == 0
    with Image.open(out) as image:
        grid = np.asarray(image)
    assert grid.shape == (3 * (64 + 2) + 2, 3 * (64 + 2) + 2, 3)
    tiles = [grid[2:66, 2 + c * 66 : 66 + c * 66] for c in range(3)]
    assert not np.array_equal(tiles[1], tiles[2]), "the two views differ"
    assert "3 rows" in capsys.readouterr().out
    gray = tmp_path / "gray.png"
    assert cli.main(["augment-preview", "--count", "4", "--out", str(gray)]) == 0  # shipped Fashion-MNIST
    with Image.open(gray) as image:
        assert image.size == (3 * (84 + 2) + 2, 4 * (84 + 2) + 2)  # 28 px tiles enlarged 3×
