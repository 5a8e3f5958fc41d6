import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from amcl_keras import augment, data


def test_shipped_subset_is_stratified_and_real():
    images, labels = data.load_shipped("train")
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    test_images, test_labels = data.load_shipped("test")
    assert test_images.shape == (1000, 28, 28, 1) and np.bincount(test_labels).tolist() == [100] * 10
    # real photos, not noise: neighbouring pixels are strongly correlated
    flat = images[:200, :, :-1, 0].astype(float).ravel(), images[:200, :, 1:, 0].astype(float).ravel()
    assert np.corrcoef(*flat)[0, 1] > 0.8


def test_shipped_subset_bad_split():
    with pytest.raises(ValueError, match="'train' and 'test'"):
        data.load_shipped("validation")


def test_pretraining_views_fixed_batches_and_two_views():
    augmenter = augment.view_augmenter(28, 1, "abcde")
    views = data.pretraining_views(data.load(), 512, augmenter, shuffle_buffer=100, seed=0)
    assert int(views.cardinality()) == 5000 // 512  # remainder dropped
    view1, view2 = next(iter(views))
    assert view1.shape == (512, 28, 28, 1) and view1.dtype == tf.float32
    assert not np.allclose(view1, view2)


def test_tfds_named_dataset_path_with_mock_data():
    with tfds.testing.mock_data(num_examples=24):
        dataset = data.load("cifar10", "train")
        assert tuple(dataset.element_spec[0].shape) == (32, 32, 3)
        views = data.pretraining_views(dataset, 8, augment.view_augmenter(32, 3, "abcde"), shuffle_buffer=8)
        view1, _ = next(iter(views))
        assert view1.shape == (8, 32, 32, 3)
        images, labels = data.labelled_arrays("cifar10", "test", max_examples=10)
        assert images.shape == (10, 32, 32, 3) and labels.shape == (10,)


def test_unknown_tfds_name_gives_a_clear_error():
    with pytest.raises(RuntimeError, match="fashion_mnist_subset"):
        data.load("no_such_dataset_xyz", "train", download=False)


def test_a_keras_cv_pipeline_serves_as_the_augmenter():
    """Users may pass their own augmenter; keras-cv layers included."""
    import keras_cv

    crop = keras_cv.layers.RandomCropAndResize(
        target_size=(24, 24), crop_area_factor=(0.08, 1.0), aspect_ratio_factor=(3 / 4, 4 / 3)
    )
    views = data.pretraining_views(data.load(), 32, crop, shuffle_buffer=64, seed=0)
    view1, view2 = next(iter(views))
    assert view1.shape == (32, 24, 24, 1)
    assert not np.allclose(view1, view2)
