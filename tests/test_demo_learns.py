"""Training helps, and AMCL does not cost the demo what it promises: a short run of the demo
configuration (`configs/demo.yaml`, the AMCL variant chosen on validation)

1. beats the same architecture with its random initial weights on kNN, and
2. is not below plain SimCLR at the validated temperature (1 head, τ 0.1: `amcl train --no-amcl` on the
   same config, same seed, same budget) by more than the spread measured over seeds.

Measured over 5 seeds (train.seed 0–4) of exactly this test's AMCL run (8 epochs of the demo, 2026-11-29):
kNN gains over the random encoder of +6.5, +5.5, +4.5, +2.2 and +5.8 points; 4 epochs were not
enough (+2.6 and −0.4 on seeds 0 and 1). `MARGIN` is the smallest of the five, halved and rounded
down, so the test checks a real effect without being flaky.

The pair (AMCL − plain SimCLR, kNN and linear-probe points) is calibrated by `python -m tests.test_demo_learns 0 1 2`
(`CALIBRATION`); `BASELINE_MARGIN` is, per measure, the worst seed's deficit plus the seeds' spread, rounded up. The
ablation (README "Reproduction") is where AMCL's gain is measured; this test only guards that the
demo's default does not fall behind the plain method it replaces.
"""

import pathlib
import statistics
import sys

import pytest

from amcl_keras import config as config_lib, train

DEMO = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
SHORT = ["train.epochs=8", "train.mixed_precision=float32", "eval.probe_epochs=5", "eval.online_probe_every=0", "eval.telemetry_every=0",
         "eval.tensorboard=false", "export.formats=[]"]
BASELINE = ["model.amcl=false", "model.num_heads=1", "eval.random_init=false"]  # what `--no-amcl` sets
MARGIN = 0.01  # kNN accuracy (fraction) over the random encoder: 1 point
# Points, demo (AMCL) − plain SimCLR τ 0.1, seeds 0, 1, 2 of exactly these runs (2026-12-05, 2-core AVX-512
# EPYC, float32, `python -m tests.test_demo_learns 0 1 2`; demo kNN 67.5 / 66.3 / 65.8, probe 75.4 / 76.2 / 76.4;
# plain kNN 66.1 / 65.7 / 67.8, probe 78.4 / 76.4 / 78.2). At this budget AMCL is level on kNN (mean 0.0 ± 1.8)
# and behind on the probe (−1.7 ± 1.4): the margins are each measure's worst seed plus its spread, rounded up.
CALIBRATION = {"knn": [1.4, 0.6, -2.0], "linear_probe": [-3.0, -0.2, -1.8]}
BASELINE_MARGIN = {"knn": 0.04, "linear_probe": 0.045}  # accuracy (fraction)


def run(extra, seed, folder):
    config = config_lib.load(DEMO, [*SHORT, f"train.seed={seed}", *extra])
    return train.run(config, folder, verbose=0)


@pytest.mark.slow
def test_short_demo_run_beats_the_random_encoder_and_plain_simclr(tmp_path):
    demo = run([], 0, tmp_path / "demo")
    assert config_lib.load(DEMO, SHORT).model.amcl
    gain = demo["trained"]["knn"] - demo["random_init"]["knn"]
    assert gain >= MARGIN, f"kNN {demo['trained']['knn']:.3f} vs random {demo['random_init']['knn']:.3f}"
    assert config_lib.load(DEMO, BASELINE).model.settings.temperature == 0.1, "the baseline: SimCLR at the validated τ"
    plain = run(BASELINE, 0, tmp_path / "plain")
    for measure, margin in BASELINE_MARGIN.items():
        assert demo["trained"][measure] >= plain["trained"][measure] - margin, (
            f"demo {measure} {demo['trained'][measure]:.3f} < plain SimCLR {plain['trained'][measure]:.3f} - {margin}")


if __name__ == "__main__":  # calibration: python -m tests.test_demo_learns [SEEDS]
    import tempfile

    deltas = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in [int(s) for s in sys.argv[1:]] or [0, 1, 2]:
            demo = run(["eval.random_init=false"], seed, pathlib.Path(folder) / f"demo{seed}")["trained"]
            plain = run(BASELINE, seed, pathlib.Path(folder) / f"plain{seed}")["trained"]
            deltas.append(round(100 * (demo["knn"] - plain["knn"]), 2))
            print(seed, f"demo kNN {100 * demo['knn']:.1f} probe {100 * demo['linear_probe']:.1f}; plain SimCLR kNN "
                  f"{100 * plain['knn']:.1f} probe {100 * plain['linear_probe']:.1f}", flush=True)
    print("deltas (kNN points):", deltas, "mean", round(statistics.mean(deltas), 2),
          "std", round(statistics.stdev(deltas), 2) if len(deltas) > 1 else 0, flush=True)
