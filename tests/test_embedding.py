"""`amcl embed`, `amcl neighbours` and the report's embedding map (amcl_keras/embedding.py)."""

import csv
import sys

import numpy as np
import pytest
from PIL import Image

from amcl_keras import cli, data, embedding, evaluation, export, report, runs


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The tiny training run of conftest (3 SGD steps on the shipped photos)."""
    return tiny_run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("embedding") / "export"
    export.export_encoder(run_dir, out, formats=["saved_model", "onnx", "litert"])
    return out


def _keras_reference(run_dir, images):
    encoder, _ = runs.load_run(run_dir)
    return evaluation.extract_features(encoder, images)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """20 shipped test images as PNG files in two class folders (labels 'low' < 5 <= 'high'), and one broken file."""
    root = tmp_path_factory.mktemp("images")
    images, labels = data.load_shipped("test")
    for index in range(20):
        folder = root / ("low" if labels[index] < 5 else "high")
        folder.mkdir(exist_ok=True)
        Image.fromarray(images[index, :, :, 0]).save(folder / f"{index:02d}.png")
    (root / "high" / "broken.png").write_bytes(b"not a png")
    return root, images[:20], labels[:20]


def test_nearest_neighbours_match_a_brute_force_search(rng):
    gallery, queries = rng.normal(size=(50, 6)), rng.normal(size=(4, 6))
    indices, similarities = embedding.nearest_neighbours(gallery, queries, k=5)
    for q in range(4):
        cosines = [float(queries[q] @ g / np.linalg.norm(queries[q]) / np.linalg.norm(g)) for g in gallery]
        expected = sorted(range(50), key=lambda i: -cosines[i])[:5]
        assert indices[q].tolist() == expected
        np.testing.assert_allclose(similarities[q], [cosines[i] for i in expected], rtol=1e-10)
    own, _ = embedding.nearest_neighbours(gallery, gallery[:3], k=4, exclude_self=True)
    assert all(q not in own[q] for q in range(3))
    with pytest.raises(ValueError, match="k must be between 1 and 49"):
        embedding.nearest_neighbours(gallery, gallery[:3], k=50, exclude_self=True)


def test_the_pca_map_keeps_the_two_largest_variances(rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # no scikit-learn: "auto" falls back to PCA
    vectors = rng.normal(size=(300, 8)) * np.array([5.0, 1, 3, 0.5, 0.2, 0.1, 0.1, 0.1]) + 7
    points, used = embedding.map_2d(vectors)
    eigenvalues = np.linalg.eigvalsh(np.cov(vectors, rowvar=False))[::-1]
    assert used == "PCA" and points.shape == (300, 2)
    np.testing.assert_allclose(np.var(points, axis=0, ddof=1), eigenvalues[:2], rtol=1e-8)
    assert abs(np.corrcoef(points.T)[0, 1]) < 1e-8
    with pytest.raises(ValueError, match="t-SNE needs scikit-learn"):
        embedding.map_2d(vectors, "tsne")


def test_the_tsne_map_keeps_separated_groups_apart(rng):
    pytest.importorskip("sklearn")
    centres = rng.normal(size=(3, 16)) * 10
    labels = np.repeat(np.arange(3), 40)
    points, used = embedding.map_2d(centres[labels] + rng.normal(size=(120, 16)), "auto")
    assert used == "t-SNE" and points.shape == (120, 2)
    indices, _ = embedding.nearest_neighbours(points, points, k=5, exclude_self=True)  # cosine on 2-D points: use L2
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(120) * 1e9
    nearest = np.argsort(distances, axis=1)[:, :5]
    assert np.mean(labels[nearest] == labels[:, None]) > 0.95


def test_every_source_embeds_alike(run_dir, exported):
    """The Keras encoder of a run, its export folder and each artefact file give the same embeddings."""
    images = data.load_shipped("test")[0][:40]
    expected = _keras_reference(run_dir, images)
    for source, format in ((run_dir, None), (exported, None), (exported / "encoder.onnx", None),
                           (exported / "encoder.tflite", None), (exported, "onnx")):
        embedder = embedding.open_embedder(source, format)
        assert embedder.size == (28, 28) and embedder.channels == 1
        np.testing.assert_allclose(embedding.embed(embedder, images, batch_size=16), expected, atol=1e-4,
                                   err_msg=embedder.description)


def test_amcl_embed_writes_embeddings_and_an_index_of_a_folder(run_dir, image_folder, tmp_path, capsys):
    root, images, labels = image_folder
    out = tmp_path / "new" / "embeddings.npy"
    assert cli.main(["embed", str(run_dir), str(root), "--out", str(out), "--batch-size", "7"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable file(s)" in captured.err and "Wrote" in captured.out
    vectors = np.load(out)
    with open(out.with_suffix(".csv"), encoding="utf-8") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert vectors.dtype == np.float32 and len(vectors) == len(rows) == 20
    order = [int(pathlib_name(row["source"])) for row in rows]
    assert sorted(order) == list(range(20))
    assert [row["label"] for row in rows] == ["low" if labels[i] < 5 else "high" for i in order]
    np.testing.assert_allclose(vectors, _keras_reference(run_dir, images[order]), atol=1e-5)
    # the options may also come before the images: the same embeddings
    again = tmp_path / "again.npy"
    assert cli.main(["embed", str(run_dir), "--out", str(again), "--batch-size", "7", str(root)]) == 0
    np.testing.assert_array_equal(np.load(again), vectors)


def pathlib_name(source):
    return source.rsplit("/", 1)[-1].split(".")[0]


@pytest.mark.slow
def test_amcl_neighbours_of_training_images_are_mostly_their_class(tmp_path, capsys):
    """A demo-sized encoder after 40 steps; 100 training images as queries among 2,000 (10 classes: 10 % by
    chance), 8 neighbours each."""
    run_dir, out = tmp_path / "run", tmp_path / "grid.png"
    assert cli.main(["train", "--run-dir", str(run_dir), "--epochs", "2", "--steps-per-epoch", "20", "--set",
                     "data.batch_size=128", "--set", "eval.probe_epochs=1", "--set", "eval.max_examples=200",
                     "--set", "export.formats=[]"]) == 0
    assert cli.main(["neighbours", str(run_dir), "--dataset", "fashion_mnist_subset", "--split", "train",
                     "--max-examples", "2000", "--count", "100", "-k", "8", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    agreement = float(line.split("; ")[1].split("%")[0]) / 100
    assert agreement > 0.5, line  # measured 0.60 on one CPU; a broken search gives ~0.1
    images, labels = data.load_shipped("train")
    vectors = _keras_reference(run_dir, images[:2000])
    order = np.random.default_rng(0).permutation(2000)
    indices, _ = embedding.nearest_neighbours(vectors[order], vectors[order][:100], 8, exclude_self=True)
    expected = embedding.label_agreement(labels[order][:100].tolist(), labels[order].tolist(), indices)
    assert abs(agreement - expected) < 0.002
    with Image.open(out) as grid:
        assert grid.size[1] > grid.size[0]  # 100 rows of 9 images
        assert np.asarray(grid.convert("L")).std() > 10


def test_neighbours_of_given_query_files(run_dir, exported, image_folder, tmp_path, capsys):
    root, _, _ = image_folder
    out = tmp_path / "grid.png"
    assert cli.main(["neighbours", str(exported / "encoder.onnx"), str(root), "--queries", str(root / "low"), "-k", "3",
                     "--out", str(out)]) == 0
    assert "queries x 3 neighbours" in capsys.readouterr().out and out.is_file()


@pytest.mark.parametrize("arguments, message", [
    (["{run}", "--out", "{tmp}/e.npy"], "either as IMAGES"),
    (["{run}", "{images}", "--dataset", "fashion_mnist_subset", "--out", "{tmp}/e.npy"], "not both"),
    (["{tmp}/missing", "{images}", "--out", "{tmp}/e.npy"], "does not exist"),
    (["{tmp}", "{images}", "--out", "{tmp}/e.npy"], "neither a run directory"),
    (["{run}", "{images}", "--out", "{tmp}/e.txt"], "must name a .npy file"),
    (["{run}", "{tmp}/no-images", "--out", "{tmp}/e.npy"], "No image files"),
    (["{run}", "{images}", "--format", "onnx", "--out", "{tmp}/e.npy"], "No export in"),
    (["{export}/encoder.onnx", "{images}", "--format", "litert", "--out", "{tmp}/e.npy"], "is the onnx artefact"),
    (["{run}", "--dataset", "fashion_mnist_subset", "--split", "validation", "--out", "{tmp}/e.npy"], "has the splits"),
    (["{run}", "{images}", "--batch-size", "0", "--out", "{tmp}/e.npy"], "at least 1"),
], ids=["no-images", "both", "missing-source", "not-a-source", "not-npy", "empty-folder", "no-export",
        "format-mismatch", "bad-split", "batch-size"])
def test_embed_bad_inputs_are_one_line_and_exit_2(run_dir, exported, image_folder, tmp_path, capsys, arguments, message):
    (tmp_path / "no-images").mkdir()
    values = {"run": str(run_dir), "tmp": str(tmp_path), "images": str(image_folder[0]), "export": str(exported)}
    assert cli.main(["embed", *[a.format(**values) for a in arguments]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "e.npy").exists()


def test_neighbours_count_larger_than_the_gallery_is_refused(run_dir, image_folder, tmp_path, capsys):
    assert cli.main(["neighbours", str(run_dir), str(image_folder[0]), "--count", "50", "--out",
                     str(tmp_path / "g.png")]) == 2
    assert "--count must be between 1 and the gallery's 20 images" in capsys.readouterr().err


def test_the_report_map_is_the_pca_of_the_run_embeddings(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    points, labels, used = report.embedding_map(run_dir, count=300)
    images, expected_labels = data.load_shipped("test")
    vectors = _keras_reference(run_dir, images[:300]).astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(np.cov(vectors, rowvar=False))[::-1]
    names = data.shipped_class_names("fashion_mnist_subset")
    assert used == "PCA" and points.shape == (300, 2)
    assert list(labels) == [names[y] for y in expected_labels[:300]]  # the class names, in the images' order
    np.testing.assert_allclose(np.var(points, axis=0, ddof=1), eigenvalues[:2], rtol=1e-3)
