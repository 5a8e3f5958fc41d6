"""Where do AMCL's per-pair weights go? A diagnostic of finished SimSiam / Barlow Twins runs.

With the "normalized" objective (docs/METHOD.md §9) SimSiam's and Barlow Twins' inverse
temperatures act as weights w = (1/τ)/mean(1/τ) on each pair's term. φ is trained to MINIMISE the
loss, so it may learn to weight EASY pairs (already solved) and starve the encoder of gradient from
hard ones. This script measures it on one fixed training batch of each finished run:

* the run's config, data pipeline and augmentation give the batch (the first batch of the run's
  own training stream, seed `train.seed`: the batch the run's telemetry used); the trained model
  (`final.weights.h5`) embeds both views in training mode, as its loss saw them;
* per head and term (SimSiam: both directions pooled, each normalised over the batch as the loss
  does; Barlow Twins: the diagonal and the off-diagonal channel pairs separately) it reports τ,
  w = (1/τ)/mean(1/τ) over the pairs of the term, and each pair's EASINESS (higher = easier):
  SimSiam: cos(p, sg z) of the direction; Barlow Twins diagonal: −|1 − C_ll|; off-diagonal: −C_lm²;
* statistics: Spearman ρ(w, easiness) (> 0: the weight sits on easy pairs), the effective fraction
  of pairs (Σw)²/(n·Σw²) (1: uniform), the share of the total weight held by the 10% most-weighted
  pairs (0.1: uniform), min / median / max τ;
* the same for the pair's actual gradient weight |∂loss/∂similarity| under the run's objective
  (normalized: w, or 2w|1 − wC| / 2λw|C| for Barlow; authors: 1/τ-based; rectified: softplus' slope),
  and for the plain method (all τ equal) on the same embeddings;
* control: a fresh φ (the loss's initialisation, `--control-seeds` seeds) on the same embeddings.

    python -m benchmarks.weight_diagnostics RUN_DIR [RUN_DIR ...] --out DIR

Writes DIR/weight_diagnostics.json and DIR/weight_diagnostics.md and prints the table. Uses one
CPU thread for TensorFlow's ops by default (`--threads`).
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


# --- statistics ---------------------------------------------------------------------------------
def average_ranks(x):
    """Ranks 0..n-1 of a 1-D array, ties given their mean rank (as scipy.stats.rankdata − 1)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    group_rank = (starts + ends - 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman(a, b):
    """Spearman's ρ with average ranks for ties; NaN when either side is constant."""
    try:
        from scipy.stats import spearmanr  # noqa: PLC0415
        value = spearmanr(np.ravel(a), np.ravel(b)).statistic
        return float(value)
    except ImportError:
        pass
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def weight_stats(weight, easiness):
    """ρ(weight, easiness), effective fraction (Σw)²/(n·Σw²), top-10% share of Σw."""
    w = np.asarray(weight, dtype=np.float64).ravel()
    n = w.size
    total = w.sum()
    top = int(np.ceil(0.1 * n))
    top_share = float(np.sort(w)[::-1][:top].sum() / total) if total > 0 else float("nan")
    squares = (w * w).sum()
    return {
        "spearman_easiness": spearman(w, easiness),
        "effective_fraction": float(total * total / (n * squares)) if squares > 0 else float("nan"),
        "top10_share": top_share,
    }


def tau_stats(tau, bounds):
    """min / median / max / mean τ, and the fractions of pairs within 10% of τ_min (floor) and above τ_max/2."""
    tau = np.asarray(tau, dtype=np.float64).ravel()
    low, high = bounds
    return {"tau_min": float(tau.min()), "tau_median": float(np.median(tau)), "tau_max": float(tau.max()),
            "tau_mean": float(tau.mean()), "tau_floor_fraction": float(np.mean(tau < 1.1 * low)),
            "tau_upper_half_fraction": float(np.mean(tau > 0.5 * high))}


def mean_one(inverse, axis=-1):
    return inverse / inverse.mean(axis=axis, keepdims=True)


# --- per-method pair terms ----------------------------------------------------------------------
def simsiam_terms(tau1, tau2, sim1, sim2, objective):
    """One head: pooled over both directions, each direction's w normalised over the batch.
    Returns (w, easiness, gradient weight under `objective`, gradient weight of plain SimSiam)."""
    w = np.concatenate([mean_one(1.0 / tau1), mean_one(1.0 / tau2)])
    tau = np.concatenate([tau1, tau2])
    sim = np.concatenate([sim1, sim2])
    if objective == "normalized":
        gradient = w
    elif objective == "authors":
        gradient = 1.0 / tau
    else:  # rectified: d softplus(−s/τ)/ds = −sigmoid(−s/τ)/τ
        gradient = 1.0 / (1.0 + np.exp(sim / tau)) / tau
    return w, tau, sim, gradient, np.ones_like(sim), {"cosine_mean": float(sim.mean()), "cosine_min": float(sim.min())}


def barlow_terms(tau, correlation, objective, lambda_):
    """One head: {"diagonal": ..., "off-diagonal": ...} of (w, τ, easiness, gradient weight, plain
    Barlow Twins' gradient weight); w normalised over each part separately, as the loss does."""
    d = tau.shape[0]
    diag = np.eye(d, dtype=bool)
    tau_d, c_d = tau[diag], correlation[diag]
    tau_o, c_o = tau[~diag], correlation[~diag]
    w_d, w_o = mean_one(1.0 / tau_d), mean_one(1.0 / tau_o)
    if objective == "normalized":
        scaled_d = w_d * c_d  # the diagonal term is (1 − w·C_ll)²
        grad_d, grad_o = np.abs(2.0 * w_d * (1.0 - scaled_d)), 2.0 * lambda_ * w_o * np.abs(c_o)
    else:  # authors and rectified share the squared terms (1 − C/τ)² and λ·C²/τ
        scaled_d = c_d / tau_d
        grad_d, grad_o = np.abs(2.0 * (1.0 - scaled_d) / tau_d), 2.0 * lambda_ * np.abs(c_o) / tau_o
    # Where the scaled diagonal overshoots 1, the diagonal term pushes C_ll DOWN (decorrelates the two views).
    overshoot = scaled_d > 1.0
    extras = {"diagonal_overshoot_fraction": float(overshoot.mean()),
              "diagonal_overshoot_gradient_share": float(grad_d[overshoot].sum() / grad_d.sum()) if grad_d.sum() > 0
              else float("nan"),
              "C_ll_mean": float(c_d.mean()), "C_ll_median": float(np.median(c_d))}
    return {
        "diagonal": (w_d, tau_d, -np.abs(1.0 - c_d), grad_d, np.abs(2.0 * (1.0 - c_d)), extras),
        "off-diagonal": (w_o, tau_o, -np.square(c_o), grad_o, 2.0 * lambda_ * np.abs(c_o),
                         {"C_lm_squared_mean": float(np.square(c_o).mean())}),
    }


# --- one run ------------------------------------------------------------------------------------
def fixed_batch(config, training_data):
    """The first batch of the run's own training stream, as two views (float32)."""
    import tensorflow as tf  # noqa: PLC0415

    batch = next(iter(training_data.views.take(1)))
    if training_data.augment_in_step:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        view1, view2 = training_data.augmenter(images, training=True), training_data.augmenter(images, training=True)
    else:
        view1, view2 = batch
    return tf.cast(view1, tf.float32), tf.cast(view2, tf.float32)


def head_outputs(model, method, view1, view2):
    """What the loss sees, in training mode (batch statistics per view, as in `train_step`):
    SimSiam: normalised (p1, sg z2, p2, sg z1) `[C, B, d]`; Barlow Twins: raw z1, z2 `[C, B, d]`."""
    import tensorflow as tf  # noqa: PLC0415

    from amcl_keras.losses import barlow_twins as barlow_losses  # noqa: PLC0415
    from amcl_keras.losses import simsiam as simsiam_losses  # noqa: PLC0415

    _, z1, z2 = model.embed_views(view1, view2, training=True)
    if method == "simsiam":
        p1, p2 = model.through_views(lambda z: model.predictor(z, training=True), z1, z2)
        return simsiam_losses._pairs(p1, p2, z1, z2, tf.float32)
    return barlow_losses._global_views(z1, z2, tf.float32)


def pair_tables(method, phi, outputs, objective, lambda_):
    """{(head, term): (w, τ, easiness, gradient weight, plain gradient weight)} for one φ."""
    import tensorflow as tf  # noqa: PLC0415

    from amcl_keras.losses.barlow_twins import cross_correlation  # noqa: PLC0415

    tables = {}
    if method == "simsiam":
        a, b, c, d = outputs
        tau1, tau2 = phi(a, b).numpy(), phi(c, d).numpy()
        sim1, sim2 = tf.reduce_sum(a * b, -1).numpy(), tf.reduce_sum(c * d, -1).numpy()
        for head in range(tau1.shape[0]):
            tables[head, "both directions"] = simsiam_terms(tau1[head], tau2[head], sim1[head], sim2[head], objective)
    else:
        z1, z2 = outputs
        correlation = cross_correlation(z1, z2).numpy()
        tau = phi.pairwise(tf.transpose(z1, [0, 2, 1]), tf.transpose(z2, [0, 2, 1])).numpy()
        for head in range(tau.shape[0]):
            for term, values in barlow_terms(tau[head], correlation[head], objective, lambda_).items():
                tables[head, term] = values
    return tables


def summarise(values, bounds):
    w, tau, easiness, gradient, plain, extras = values
    return {
        **extras,
        "pairs": int(w.size),
        "weight": {**weight_stats(w, easiness), "w_min": float(w.min()), "w_max": float(w.max())},
        **tau_stats(tau, bounds),
        "easiness_mean": float(np.mean(easiness)),
        "gradient": weight_stats(gradient, easiness),
        "plain_gradient": weight_stats(plain, easiness) if np.ptp(plain) > 0 else None,
    }


def diagnose(run_dir, control_seeds):
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from amcl_keras import runs, train  # noqa: PLC0415
    from amcl_keras.temperature import AdaptiveTemperature  # noqa: PLC0415

    run_dir = pathlib.Path(run_dir)
    config = runs.load_config(run_dir)
    cfg = config.model
    if cfg.method not in ("simsiam", "barlow_twins"):
        raise ValueError(f"{run_dir}: method {cfg.method!r}; this diagnostic covers simsiam and barlow_twins.")
    if not cfg.amcl:
        raise ValueError(f"{run_dir}: not an AMCL run (model.amcl=false): there is no φ to diagnose.")
    results = runs.read_results(run_dir)
    started = time.perf_counter()
    keras.utils.set_random_seed(config.train.seed)
    training_data = train.load_data(config)
    view1, view2 = fixed_batch(config, training_data)
    model = train.build(config, training_data, tf.distribute.get_strategy())
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # final.weights.h5 holds the optimizer state too
    model.load_weights(str(run_dir / runs.FINAL_WEIGHTS))
    outputs = head_outputs(model, cfg.method, view1, view2)
    loss = model.contrastive_loss
    lambda_ = getattr(loss, "lambda_", None)
    trained = pair_tables(cfg.method, loss.temperature, outputs, cfg.objective, lambda_)
    phi = loss.temperature
    controls = []
    for seed in control_seeds:
        keras.utils.set_random_seed(seed)
        fresh = AdaptiveTemperature(phi.projection_dim, hidden_dim=phi.hidden_dim, temperature_min=phi.temperature_min,
                                    temperature_max=phi.temperature_max)
        controls.append(pair_tables(cfg.method, fresh, outputs, cfg.objective, lambda_))
    bounds = (phi.temperature_min, phi.temperature_max)
    rows = []
    for key, values in trained.items():
        head, term = key
        control = [summarise(c[key], bounds) for c in controls]
        rows.append({
            "head": head, "term": term, "trained_phi": summarise(values, bounds),
            "random_phi": {
                "seeds": list(control_seeds),
                "spearman_easiness_mean": float(np.mean([c["weight"]["spearman_easiness"] for c in control])),
                "spearman_easiness_range": [float(min(c["weight"]["spearman_easiness"] for c in control)),
                                            float(max(c["weight"]["spearman_easiness"] for c in control))],
                "effective_fraction_mean": float(np.mean([c["weight"]["effective_fraction"] for c in control])),
                "top10_share_mean": float(np.mean([c["weight"]["top10_share"] for c in control])),
                "tau_min": float(min(c["tau_min"] for c in control)),
                "tau_median_mean": float(np.mean([c["tau_median"] for c in control])),
                "tau_max": float(max(c["tau_max"] for c in control)),
                "tau_floor_fraction_mean": float(np.mean([c["tau_floor_fraction"] for c in control])),
                "per_seed": control,
            },
        })
    trained_scores = results.get("trained") or {}
    return {
        "run_dir": str(run_dir),
        "method": cfg.method,
        "objective": cfg.objective,
        "beta": cfg.beta,
        "temperature_center": cfg.temperature_center,
        "num_heads": cfg.num_heads,
        "projection_dim": cfg.projection_dim,
        "batch": int(view1.shape[0]),
        "dataset": config.data.dataset,
        "linear_probe": trained_scores.get("linear_probe"),
        "knn": trained_scores.get("knn"),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }


# --- report -------------------------------------------------------------------------------------
def run_label(record):
    path = pathlib.Path(record["run_dir"])
    dataset = path.parents[2].name if len(path.parents) > 2 else ""
    return f"{dataset}/{path.name}" if dataset else path.name


def markdown(records):
    def f(x, digits=2):
        return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"

    def g(x):
        return "–" if x is None else f"{x:.3g}"

    lines = [
        "## Where the AMCL weights w = (1/τ)/mean(1/τ) go (one fixed training batch per run)",
        "",
        "ρ: Spearman correlation of w with the pair's easiness (> 0: weight on EASY pairs; SimSiam: cos(p, sg z), "
        "Barlow diagonal: −|1 − C_ll|, off-diagonal: −C_lm²). eff: (Σw)²/(n·Σw²) (1 = uniform). top10: share of Σw "
        "held by the 10% most-weighted pairs (0.10 = uniform). Random φ: a fresh temperature network (the loss's "
        "init), mean over seeds (ρ range in brackets), on the same embeddings. τ at floor: fraction of pairs with "
        "τ < 1.1·τ_min.",
        "",
        "| run | probe / kNN | head | term | n | ρ(w, easy) | eff | top10 | τ min / median / max | τ at floor "
        "| random φ: ρ [range] | eff | top10 | τ min / med / max | τ at floor |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for record in records:
        scores = f"{f(record['linear_probe'], 3)} / {f(record['knn'], 3)}"
        for row in record["rows"]:
            t, r = row["trained_phi"], row["random_phi"]
            lo, hi = r["spearman_easiness_range"]
            lines.append(
                f"| {run_label(record)} | {scores} | {row['head']} | {row['term']} | {t['pairs']} "
                f"| {f(t['weight']['spearman_easiness'])} | {f(t['weight']['effective_fraction'])} "
                f"| {f(t['weight']['top10_share'])} | {g(t['tau_min'])} / {g(t['tau_median'])} / {g(t['tau_max'])} "
                f"| {f(t['tau_floor_fraction'])} | {f(r['spearman_easiness_mean'])} [{f(lo)}, {f(hi)}] | {f(r['effective_fraction_mean'])} "
                f"| {f(r['top10_share_mean'])} | {g(r['tau_min'])} / {g(r['tau_median_mean'])} / {g(r['tau_max'])} "
                f"| {f(r['tau_floor_fraction_mean'])} |"
            )
    lines += [
        "",
        "### The encoder's gradient weight per pair, |∂loss/∂similarity|, under each run's objective",
        "",
        "Same statistics for the actual gradient weight (normalized SimSiam: w; Barlow diagonal: 2w|1 − w·C_ll|, "
        "off-diagonal: 2λw|C_lm|; authors / rectified: their own terms), next to the plain method's (all τ equal) "
        "on the same embeddings (SimSiam's plain weights are uniform). Diag. overshoot: Barlow diagonal pairs whose "
        "scaled correlation (w·C_ll, or C_ll/τ) exceeds 1, where the loss pushes C_ll DOWN, and their share of the "
        "diagonal gradient weight.",
        "",
        "| run | head | term | AMCL ρ(g, easy) | eff | top10 | plain ρ(g, easy) | eff | top10 | diag. overshoot: pairs / grad share |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for record in records:
        for row in record["rows"]:
            t = row["trained_phi"]
            a, p = t["gradient"], t["plain_gradient"]
            plain = (f"{f(p['spearman_easiness'])} | {f(p['effective_fraction'])} | {f(p['top10_share'])}" if p
                     else "uniform | 1.00 | 0.10")
            over = (f"{f(t['diagonal_overshoot_fraction'])} / {f(t['diagonal_overshoot_gradient_share'])}"
                    if "diagonal_overshoot_fraction" in t else "")
            lines.append(
                f"| {run_label(record)} | {row['head']} | {row['term']} | {f(a['spearman_easiness'])} "
                f"| {f(a['effective_fraction'])} | {f(a['top10_share'])} | {plain} | {over} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="finished AMCL SimSiam / Barlow Twins run directories")
    parser.add_argument("--out", required=True, help="folder for weight_diagnostics.json and .md")
    parser.add_argument("--control-seeds", type=int, nargs="+", default=[101, 102, 103, 104, 105],
                        help="seeds of the fresh φ of the control")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra/inter-op threads (default 1)")
    args = parser.parse_args(argv)
    import tensorflow as tf  # noqa: PLC0415

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    records = []
    for run_dir in args.run_dirs:
        if not (pathlib.Path(run_dir) / "results.json").is_file():
            print(f"skipping {run_dir}: no results.json (not finished)", file=sys.stderr)
            continue
        print(f"diagnosing {run_dir} ...", file=sys.stderr)
        try:
            records.append(diagnose(run_dir, args.control_seeds))
        except ValueError as error:
            print(f"skipping {run_dir}: {error}", file=sys.stderr)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "weight_diagnostics.json").write_text(json.dumps({"runs": records}, indent=1) + "\n")
    table = markdown(records)
    (out / "weight_diagnostics.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
