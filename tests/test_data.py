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


def _write_folder(root, layout):
    """Write real images (shipped Fashion-MNIST photos and colour samples) into a folder tree."""
    from PIL import Image

    gray, labels = data.load_shipped("test")
    colour = data.load_rgb_samples()
    for index, relative in enumerate(layout):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if "colour" in relative:
            Image.fromarray(colour[index % len(colour)]).save(path)
        else:
            Image.fromarray(gray[index, :, :, 0]).resize((28 + index % 3 * 4,) * 2).save(path)  # mixed sizes


def test_image_folder_layout_gives_labelled_resized_images(tmp_path):
    layout = [f"train/{cls}/{i}.png" for cls in ("bag", "coat") for i in range(5)]
    layout += ["train/coat/colour.jpg", "test/bag/0.png", "test/coat/1.png"]
    _write_folder(tmp_path, layout)
    dataset = data.load(str(tmp_path), "train", image_size=24)
    images, labels = zip(*[(x.numpy(), int(y)) for x, y in dataset])
    assert len(images) == 11 and sorted(set(labels)) == [0, 1]  # bag = 0, coat = 1 (sorted names)
    assert {im.shape for im in images} == {(24, 24, 3)}  # mixed sizes resized; one colour file → RGB
    assert images[0].dtype == np.uint8
    test_images, test_labels = data.labelled_arrays(str(tmp_path), "test", image_size=24, channels=1)
    assert test_images.shape == (2, 24, 24, 1) and test_labels.tolist() == [0, 1]


def test_plain_folder_is_unlabeled_and_grayscale_when_every_file_is(tmp_path):
    _write_folder(tmp_path, [f"shots/day{i % 2}/{i}.png" for i in range(6)])
    dataset, scan = data.load_folder(tmp_path, "train")
    assert scan.classes == [] and scan.channels == 1 and scan.mixed_sizes
    labels = [int(y) for _, y in dataset]
    assert labels == [-1] * 6


def test_unreadable_images_are_skipped_and_counted_or_stop(tmp_path, caplog):
    _write_folder(tmp_path, [f"train/a/{i}.png" for i in range(3)])
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    dataset, scan = data.load_folder(tmp_path, "train")
    assert len(scan.files) == 3 and len(scan.skipped) == 1 and scan.skipped[0].endswith("broken.png")
    assert "Skipped 1 unreadable image" in caplog.text
    assert len(list(dataset)) == 3
    with pytest.raises(ValueError, match="broken.png.*on_bad_image: skip"):
        data.load_folder(tmp_path, "train", on_bad_image="error")


def test_empty_or_missing_folders_are_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No images.*ImageFolder layout"):
        data.load(str(tmp_path / "empty"), "train")
    with pytest.raises(ValueError, match="does not exist"):
        data.load(str(tmp_path / "missing") + "/", "train")


@pytest.mark.parametrize("size_override", [pytest.param(["--set", "data.image_size=28"], marks=pytest.mark.slow), []],
                         ids=["image_size", "inferred"])
def test_training_on_a_folder_through_the_cli(tmp_path, size_override):
    """Mixed image sizes; without image_size the test split follows the training split's size."""
    from amcl_keras import cli

    layout = [f"{split}/{cls}/{i}.png" for split in ("train", "test") for cls in ("x", "y") for i in range(20)]
    _write_folder(tmp_path / "data", layout[::-1])  # test images first: their first file is 28 px
    code = cli.main([
        "train", "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--set", f"data.dataset={tmp_path / 'data'}",
        *size_override, "--set", "data.batch_size=16", "--set", "model.encoder_width=4",
        "--set", "eval.probe_epochs=1", "--set", "eval.knn_k=5", "--set", "export.formats=[]",
    ])
    assert code == 0
    import json

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["examples"] == {"train": 40, "test": 40} and results["trained"]["knn"] >= 0


def test_unlabeled_folder_pretrains_and_skips_evaluation(tmp_path, capsys):
    from amcl_keras import cli

    _write_folder(tmp_path / "photos", [f"{i}.png" for i in range(20)])
    code = cli.main([
        "train", "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--set", f"data.dataset={tmp_path / 'photos'}",
        "--set", "data.image_size=28", "--set", "data.batch_size=8", "--set", "model.encoder_width=4",
        "--set", "export.formats=[onnx]",
    ])
    assert code == 0
    assert "unlabeled data, so no linear probe or kNN" in capsys.readouterr().out
    assert (tmp_path / "run" / "export" / "encoder.onnx").exists()


def test_pipeline_shards_by_data_across_workers():
    views = data.pretraining_views(data.load(), 64, None, shuffle_buffer=10)
    policy = views.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA
    assert next(iter(views)).shape == (64, 28, 28, 1)  # no augmenter: plain float batches for in-step views


def test_stl10_unlabelled_split_with_mock_data():
    with tfds.testing.mock_data(num_examples=16):
        dataset = data.load("stl10", "unlabelled")
        image, _ = next(iter(dataset))
        assert image.shape == (96, 96, 3)


def test_npz_dataset_loads_like_the_arrays_it_holds(tmp_path):
    images, labels = data.load_shipped("test")
    path = tmp_path / "arrays.npz"
    np.savez(path, train_images=images[:50, ..., 0], train_labels=labels[:50])  # [N, H, W]: channel added
    loaded = list(data.load(str(path), "train").as_numpy_iterator())
    assert len(loaded) == 50 and loaded[0][0].shape == (28, 28, 1)
    np.testing.assert_array_equal(np.stack([x for x, _ in loaded]), images[:50])
    arrays = data.labelled_arrays(str(path), "train", max_examples=20)
    np.testing.assert_array_equal(arrays[1], labels[:20])
    with pytest.raises(ValueError, match="no \\['test_images', 'test_labels'\\] for split 'test'"):
        data.load(str(path), "test")
    with pytest.raises(ValueError, match="does not exist"):
        data.load(str(tmp_path / "missing.npz"))
    np.savez(path, train_images=images[:5].astype(np.float32), train_labels=labels[:5])
    with pytest.raises(ValueError, match="expected uint8 images"):
        data.load(str(path))


def test_read_idx_follows_the_idx_layout(tmp_path):
    import gzip
    import struct

    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 2, 3, 4)  # uint8, rank 3, big-endian sizes
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as handle:
        handle.write(header + values.tobytes())
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x-idx3-ubyte.gz"), values)
