"""What the defaults promise: for every registered method, training with AMCL on and the method's
validated default settings (docs/METHOD.md §10) gives an encoder that is not worse than the same
method's plain baseline (1 head, its fixed temperature) at the same tiny budget, beyond the spread
measured over seeds — or, for a method whose AMCL lost on validation (Barlow Twins, SimSiam: its
settings' `amcl_caveat`), the AMCL run prints that caveat once at the start of training.

The runs are tiny (`TINY`: 4 epochs × 10 steps of 128 pairs of the shipped Fashion-MNIST subset), so
they check that the default never breaks an encoder (the collapse of the authors' AMCL-Barlow Twins
cost 15–20 kNN points at the study's budget), not that AMCL wins: the ablation in
`benchmarks/ablation.py` (README "Reproduction") is where gains are measured.

`MARGIN` (kNN accuracy, fraction) comes from `python -m tests.test_defaults_not_worse 0 1 2` (3 seeds
of this exact pair of runs per method; `CALIBRATION` holds the numbers).
"""

import pathlib
import re
import statistics
import sys

import pytest

from amcl_keras import config as config_lib, registry, train
from tests.methods.helpers import SHIPPED_METHODS

METHOD_MD = pathlib.Path(__file__).resolve().parents[1] / "docs" / "METHOD.md"

TINY = ["data.dataset=fashion_mnist_subset", "data.batch_size=128", "train.epochs=4", "train.steps_per_epoch=10",
        "train.strategy=default", "eval.probe_epochs=5", "eval.max_examples=2000", "eval.random_init=false",
        "eval.online_probe_every=0", "eval.telemetry_every=0", "eval.tensorboard=false", "export.formats=[]",
        "model.encoder_width=16"]
# kNN points, AMCL default − baseline, seeds 0, 1, 2 of this exact pair of runs (2026-12-04, 2-core
# AVX-512 EPYC): Barlow Twins −9.7, −8.9, −7.9 (before φ got its own clipping norm; its caveat is printed
# instead of the comparison); MoCo −1.9, +3.7, +4.6;
# SimCLR 0.0, +1.4, +0.4. The margin is MoCo's worst seed plus its seed spread (3.5), rounded up: it
# catches a collapse of Barlow Twins' size while passing the noise of CPU kernels on other machines.
CALIBRATION = {"barlow_twins": [-9.7, -8.9, -7.9], "moco": [-1.9, 3.7, 4.6], "simclr": [0.0, 1.4, 0.4]}
MARGIN = 0.055  # kNN accuracy (fraction)


def knn_pair(method, seed, tmp_path):
    """(default AMCL kNN, baseline kNN) of `method` at the tiny budget, same seed."""
    out = {}
    for arm, extra in (("amcl", ["model.amcl=true"]), ("baseline", ["model.amcl=false", "model.num_heads=1"])):
        config = config_lib.load(None, [f"model.method={method}", f"train.seed={seed}", *TINY, *extra])
        out[arm] = train.run(config, tmp_path / f"{method}-{arm}-{seed}", verbose=0)["trained"]["knn"]
    return out["amcl"], out["baseline"]


def documented_defaults():
    """display name → (baseline τ or None, objective, φ stop-gradient yes/no, caveat yes/no, temperature clipping)
    from docs/METHOD.md §10's table (the objective cell: e.g. "weighted" or "weighted, φ stop-gradient, φ clipped
    separately")."""
    section = METHOD_MD.read_text(encoding="utf-8").split("## 10.")[1]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        objective = cells[2].split(",")[0] if len(cells) == 5 else None
        if objective in ("normalized", "rectified", "authors", "weighted", "head_weighted"):
            rows[cells[0]] = (None if cells[1] == "–" else float(cells[1]), objective, "stop-gradient" in cells[2],
                              cells[4] == "yes", "separate" if "clipped separately" in cells[2] else "joint")
    return rows


@pytest.mark.parametrize("method", SHIPPED_METHODS)
def test_documented_defaults_are_the_settings_defaults(method):
    """docs/METHOD.md §10 states each method's validated defaults; the settings class must hold them."""
    spec = registry.METHODS[method]
    rows = documented_defaults()
    assert spec.display_name in rows, f"docs/METHOD.md §10 has no row for {spec.display_name}"
    tau, objective, stop_gradient, caveat, clipping = rows[spec.display_name]
    settings = spec.settings()
    assert settings.objective == objective
    assert settings.temperature_stop_gradient == stop_gradient
    assert settings.temperature_clipping == clipping
    assert getattr(settings, "temperature", None) == tau
    assert bool(spec.settings.amcl_caveat) == caveat


@pytest.mark.parametrize("method", sorted(registry.METHODS))
def test_the_caveat_line_is_printed_only_with_amcl_on(method):
    on = config_lib.load(None, [f"model.method={method}"])
    off = config_lib.load(None, [f"model.method={method}", "model.amcl=false"])
    caveat = registry.METHODS[method].settings.amcl_caveat
    assert train.amcl_caveat(off) is None
    if caveat:
        line = train.amcl_caveat(on)
        assert line.startswith("amcl: note: ") and "\n" not in line and re.search(r"-?\d+\.\d", line)
    else:
        assert train.amcl_caveat(on) is None


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(registry.METHODS))
def test_default_amcl_is_not_below_its_baseline(method, tmp_path, capsys):
    amcl_knn, baseline_knn = knn_pair(method, 0, tmp_path)
    caveat = train.amcl_caveat(config_lib.load(None, [f"model.method={method}"]))
    if caveat:  # the method's AMCL lost on validation: the user is told, once, by the AMCL run only
        assert capsys.readouterr().err.count(caveat) == 1
        return
    assert amcl_knn >= baseline_knn - MARGIN, (
        f"{method}: default AMCL kNN {amcl_knn:.3f} < baseline {baseline_knn:.3f} - {MARGIN}"
    )


if __name__ == "__main__":  # calibration: python -m tests.test_defaults_not_worse [SEEDS]
    import pathlib
    import tempfile

    seeds = [int(s) for s in sys.argv[1:]] or [0, 1, 2, 3, 4]
    with tempfile.TemporaryDirectory() as folder:
        for method in sorted(registry.METHODS):
            deltas = []
            for seed in seeds:
                amcl_knn, baseline_knn = knn_pair(method, seed, pathlib.Path(folder))
                deltas.append(round(100 * (amcl_knn - baseline_knn), 2))
                print(method, seed, f"amcl {100 * amcl_knn:.1f} baseline {100 * baseline_knn:.1f}", flush=True)
            print(method, "deltas (points):", deltas, "mean", round(statistics.mean(deltas), 2),
                  "std", round(statistics.stdev(deltas), 2) if len(deltas) > 1 else 0, flush=True)
