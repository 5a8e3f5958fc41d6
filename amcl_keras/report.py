"""`amcl report`: one PNG with the curves of one or several runs side by side.

Panels: training loss per epoch; kNN and online linear-probe accuracy per epoch (when the run
monitored them) with the final linear-probe/kNN results; per-head mean τ⁺ (solid) and τ⁻ (dashed) per epoch; and the
histogram of positive vs negative cosine similarities of the final encoder's features on the
run's test images (positives: two augmented views of one image; negatives: views of two
different images) — the paper's Fig. 1 view. Below them, one panel per run: a 2-D map of the final encoder's
embeddings of the run's test images, coloured by label (t-SNE with scikit-learn installed —
`pip install "amcl-keras[map]"` — else PCA; `embedding.map_2d`).
"""

import json
import pathlib

import numpy as np
import tensorflow as tf

from amcl_keras import augment, data, embedding, runs


def similarity_samples(run_dir, count=256, seed=0):
    """Cosine similarities (positive pairs, negative pairs) of the run's final encoder features."""
    encoder, _ = runs.load_run(run_dir)
    config = runs.load_config(run_dir)
    size, channels = encoder.inputs[0].shape[1], encoder.inputs[0].shape[-1]
    cfg = config.data
    images, _ = data.labelled_arrays(cfg.dataset, cfg.eval_test_split, cfg.data_dir, count, cfg.download,
                                     image_size=size, channels=channels)
    tf.random.set_seed(seed)
    augmenter = augment.view_augmenter(size, channels, cfg.augmentation, cfg.crop_scale)
    floats = data.to_float_images(images, size)

    def features(views):
        out = np.concatenate([np.asarray(encoder(views[i : i + 256], training=False)) for i in range(0, len(views), 256)])
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)

    first = features(np.asarray(augmenter(floats, training=True)))
    second = features(np.asarray(augmenter(floats, training=True)))
    positives = np.sum(first * second, axis=1)
    shifted = np.roll(second, 1, axis=0)  # view of the next image: a different image
    negatives = np.sum(first * shifted, axis=1)
    return positives, negatives


def embedding_map(run_dir, count=1000, method="auto", seed=0):
    """(points `[N, 2]`, labels `[N]`, method used) of the run's final encoder on its test images."""
    config = runs.load_config(run_dir).data
    embedder = embedding.open_embedder(run_dir)
    images = embedding.dataset_images(config.dataset, config.eval_test_split, embedder.size, embedder.channels, count,
                                      config.data_dir, config.download)
    points, used = embedding.map_2d(embedding.embed(embedder, images.images), method, seed)
    return points, np.asarray(images.labels, dtype=object), used


def write_report(run_dirs, out_path, count=256, map_count=1000, map_method="auto"):
    """Write the PNG for `run_dirs` (one or more) to `out_path`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(max(12, 4 * len(run_dirs)), 12), layout="constrained")
    curves, maps = figure.subfigures(2, 1, height_ratios=[2, 1])
    axes = curves.subplots(2, 2)
    map_axes = np.atleast_1d(maps.subplots(1, len(run_dirs)))
    (loss_ax, knn_ax), (tau_ax, sim_ax) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run_dir in enumerate(run_dirs):
        history = runs.read_history(run_dir)
        results_path = pathlib.Path(run_dir) / runs.RESULTS
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        label = f"{pathlib.Path(run_dir).name} ({results.get('method', '?')})"
        colour = colours[index % len(colours)]
        epochs = [h["epoch"] for h in history]
        loss_ax.plot(epochs, [h["loss"] for h in history], color=colour, label=label)
        if any("knn_accuracy" in h for h in history):
            knn_ax.plot([h["epoch"] for h in history if "knn_accuracy" in h],
                        [h["knn_accuracy"] for h in history if "knn_accuracy" in h], "o-", color=colour, label=label)
        if any("probe_accuracy" in h for h in history):
            knn_ax.plot([h["epoch"] for h in history if "probe_accuracy" in h],
                        [h["probe_accuracy"] for h in history if "probe_accuracy" in h], ":", color=colour)
        trained = results.get("trained") or {}
        if trained:
            knn_ax.scatter([epochs[-1]], [trained["knn"]], marker="*", s=120, color=colour)
            knn_ax.scatter([epochs[-1]], [trained["linear_probe"]], marker="s", s=60, color=colour)
        heads = sorted({key.split("_")[-1] for h in history for key in h if key.startswith("tau_pos_")})
        for head in heads:
            tau_ax.plot(epochs, [h[f"tau_pos_{head}"] for h in history], "-", color=colour,
                        label=f"{label} head {head} τ⁺" if head == heads[0] else None)
            if f"tau_neg_{head}" in history[0]:
                tau_ax.plot(epochs, [h[f"tau_neg_{head}"] for h in history], "--", color=colour)
        positives, negatives = similarity_samples(run_dir, count)
        bins = np.linspace(-1, 1, 41)
        sim_ax.hist(positives, bins=bins, histtype="step", color=colour, linestyle="-", label=f"{label} positive")
        sim_ax.hist(negatives, bins=bins, histtype="step", color=colour, linestyle="--", label=f"{label} negative")
        points, labels, used = embedding_map(run_dir, map_count, map_method)
        for value in sorted(set(labels.tolist()), key=str):
            chosen = labels == value
            map_axes[index].scatter(points[chosen, 0], points[chosen, 1], s=4, label=str(value))
        map_axes[index].set(title=f"{label}: {used} of {len(points)} test embeddings, coloured by label", xticks=[],
                            yticks=[])
    # symlog: AMCL losses can be ~1e9 next to baselines near 1, and some are negative
    loss_ax.set(title="training loss (symmetric log scale)", xlabel="epoch", yscale="symlog")
    knn_ax.set(title="kNN (o), online probe (dotted); final kNN (*), probe (■)", xlabel="epoch", ylabel="accuracy")
    tau_ax.set(title="mean temperature per head: τ⁺ solid, τ⁻ dashed", xlabel="epoch", yscale="log")
    sim_ax.set(title="cosine similarity of final features: positive vs negative pairs", xlabel="cosine")
    for axis in axes.flat:
        handles, _ = axis.get_legend_handles_labels()
        if handles:
            axis.legend(fontsize=7)
    for axis in map_axes:
        axis.legend(fontsize=6, markerscale=2, loc="best")
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return out_path
