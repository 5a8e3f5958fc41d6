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
