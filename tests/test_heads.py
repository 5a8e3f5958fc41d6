import numpy as np
import pytest

from amcl_keras import MultiHeadProjector, ProjectionHead


def test_projection_head_matches_numpy_mlp(rng):
    head = ProjectionHead(hidden_dims=(6,), output_dim=3)
    x = rng.normal(size=(4, 5)).astype("float32")
    out = head(x).numpy()
    w1, b1, w2, b2 = head.get_weights()
    np.testing.assert_allclose(out, np.maximum(x @ w1 + b1, 0) @ w2 + b2, rtol=1e-5, atol=1e-6)


def test_projection_head_with_batch_norm_has_norm_layers(rng):
    head = ProjectionHead(hidden_dims=(8, 8), output_dim=4, batch_norm=True)
    assert head(rng.normal(size=(6, 5)).astype("float32"), training=True).shape == (6, 4)
    assert sum("batch_norm" in block.name for block in head.blocks) == 2


def test_multi_head_projector_stacks_independent_heads(rng):
    projector = MultiHeadProjector(num_heads=3, hidden_dims=(16,), output_dim=8)
    x = rng.normal(size=(5, 10)).astype("float32")
    out = projector(x).numpy()
    assert out.shape == (5, 3, 8)
    for index, head in enumerate(projector.heads):
        np.testing.assert_allclose(out[:, index], head(x).numpy(), rtol=1e-6)
    # independent initialisation: no two heads share weights
    assert not np.allclose(projector.heads[0].get_weights()[0], projector.heads[1].get_weights()[0])
    assert len(projector.trainable_weights) == 3 * 4


def test_bad_head_count_is_refused():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadProjector(num_heads=0)


def _mlp_numpy(head, x):
    """Dense → BatchNorm (training: batch statistics, Keras epsilon) → ReLU blocks, then the output Dense."""
    h = x.astype(np.float64)
    for block in head.blocks:
        weights = [np.asarray(w, np.float64) for w in block.get_weights()]
        if block.name.startswith("dense") or block.name == "output":
            h = h @ weights[0] + (weights[1] if len(weights) > 1 else 0.0)
        elif block.name.startswith("batch_norm"):
            gamma, beta = weights[:2]
            h = gamma * (h - h.mean(0)) / np.sqrt(h.var(0) + block.epsilon) + beta
        elif block.name.startswith("activation"):
            h = np.maximum(h, 0.0)
    return h


def test_output_batch_norm_standardises_each_channel_without_gamma_or_beta(rng):
    """The authors' BatchNorm1d(affine=False) after the last Linear: in training mode each output
    channel has batch mean 0 and variance 1; the layer has no trainable weights."""
    head = ProjectionHead(hidden_dims=(16, 16), output_dim=6, batch_norm=True, output_batch_norm=True)
    x = rng.normal(size=(32, 5)).astype("float32")
    out = head(x, training=True).numpy().astype(np.float64)
    norm = head.blocks[-1]
    assert norm.name == "output_batch_norm" and norm.trainable_weights == []
    assert sorted(w.path.rsplit("/", 1)[-1] for w in norm.weights) == ["moving_mean", "moving_variance"]
    assert len(head.blocks[-2].weights) == 1  # the output Dense has no bias: the norm removes it
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(0), 1.0, rtol=1e-3)
    pre = _mlp_numpy(head, x)  # the last Dense's output, computed in NumPy from the weights
    np.testing.assert_allclose(out, (pre - pre.mean(0)) / np.sqrt(pre.var(0) + 1e-5), rtol=1e-4, atol=1e-4)

    plain = ProjectionHead(hidden_dims=(16, 16), output_dim=6, batch_norm=True)
    raw = plain(x, training=True).numpy()
    assert np.abs(raw.mean(0)).max() > 1e-2 or np.abs(raw.var(0) - 1.0).max() > 1e-2  # off: not standardised
    np.testing.assert_allclose(raw, _mlp_numpy(plain, x), rtol=1e-4, atol=1e-5)


def test_batch_norm_mlp_ends_in_the_output_norm_unless_turned_off():
    on = MultiHeadProjector.batch_norm_mlp(2, 8, 4)
    off = MultiHeadProjector.batch_norm_mlp(2, 8, 4, output_batch_norm=False)
    assert all(head.blocks[-1].name == "output_batch_norm" and head.blocks[-1].synchronized for head in on.heads)
    assert all(head.blocks[-1].name == "output" for head in off.heads)
    assert MultiHeadProjector.from_config(on.get_config()).heads[1].output_batch_norm
