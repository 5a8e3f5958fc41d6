"""The study's arithmetic (benchmarks/reproduce.py): paired per-seed differences to the baseline,
mean ± std over seeds, and the end temperatures read from a run's telemetry."""

import json

import numpy as np
import pytest

from benchmarks import reproduce


METHOD = "some_method"  # the summary only groups by it


def _record(arm, seed, probe, knn, temperatures=None):
    return {"method": METHOD, "preset": "abcde", "arm": arm, "seed": seed, "linear_probe": probe, "knn": knn,
            "temperatures": temperatures}


def test_deltas_are_paired_per_seed_and_spread_is_the_sample_std():
    base = {0: (0.70, 0.60), 1: (0.80, 0.50), 2: (0.75, 0.55)}
    gains = {0: (0.01, 0.03), 1: (-0.02, 0.01), 2: (0.04, 0.02)}
    records = [_record("baseline", s, *v) for s, v in base.items()]
    records += [_record("bounded", s, base[s][0] + gains[s][0], base[s][1] + gains[s][1]) for s in base]
    rows = reproduce.summarize(records, [(METHOD, "abcde")], ["baseline", "bounded"], [0, 1, 2])
    bounded = next(r for r in rows if r["arm"] == "bounded")
    probe_gains = 100 * np.array([gains[s][0] for s in base])
    assert bounded["delta_linear_probe"][0] == pytest.approx(probe_gains.mean())
    assert bounded["delta_linear_probe"][1] == pytest.approx(probe_gains.std(ddof=1))
    assert bounded["delta_knn_per_seed"] == pytest.approx([3.0, 1.0, 2.0])
    probe = 100 * np.array([base[s][0] + gains[s][0] for s in base])
    assert bounded["linear_probe"] == pytest.approx((probe.mean(), probe.std(ddof=1)))
    assert next(r for r in rows if r["arm"] == "baseline")["delta_knn"] is None


def test_end_temperatures_come_from_the_last_epoch_telemetry(tmp_path):
    heads = lambda p50: {f"head{c}": {"mean": p50, "p10": p50 / 2, "p50": p50 + c, "p90": p50 * 2 + c}  # noqa: E731
                         for c in range(3)}
    lines = [{"epoch": 1, "telemetry": {"tau_pos": heads(9.0)}},
             {"epoch": 2, "telemetry": {"tau_pos": heads(1.0), "tau_neg": heads(2.0)}}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    found = reproduce.final_temperatures(tmp_path)
    assert found["tau_pos"]["p50"] == 2.0  # median over heads of 1, 2, 3
    assert found["tau_pos"]["p10"] == 0.5 and found["tau_pos"]["p90"] == 4.0
    assert found["tau_neg"]["p50"] == 3.0
    assert reproduce.final_temperatures(tmp_path / "missing") is None
