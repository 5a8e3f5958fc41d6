"""Each method trains on the shipped real images through the library's own job (train.run)."""

import json

import numpy as np
import pytest

from amcl_keras import config as config_lib, registry, train
from tests.methods import helpers


@pytest.mark.slow
@pytest.mark.parametrize("method", registry.names())
def test_method_trains_two_epochs_with_finite_loss_and_moving_temperature(method, tmp_path):
    config = config_lib.load(None, [
        f"model.method={method}", "train.epochs=2", "train.steps_per_epoch=4", "data.batch_size=64",
        "model.encoder_width=8", "model.projection_dim=32", "model.hidden_dim=64", "eval.probe_epochs=1",
        "eval.max_examples=200", "export.formats=[]",
    ] + helpers.own_settings(method, queue_size=256, predictor_hidden_dim=16))
    results = train.run(config, tmp_path / method, verbose=0)
    history = [json.loads(line) for line in (tmp_path / method / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[0]["tau_pos_0"] != history[1]["tau_pos_0"], "the adaptive temperature should move"
    assert 1e-5 <= history[1]["tau_pos_2"] <= 2.0
    assert results["method"].startswith("AMCL-")
