"""Gradients of every loss against central finite differences, in float64.

For a loss f, a differentiable input x (an embedding, or φ's weights) and a random Gaussian
direction v, the tape's directional derivative ∇f·v must match (f(x + hv) − f(x − hv)) / 2h.
In float64 with h = 1e-6 the difference quotient is accurate to ~1e-10 relative (truncation
~h², round-off ~eps·|f|/h), so the tolerance is 1e-6 relative to max(|∇f·v|, ‖∇f‖) (‖∇f‖ is
the typical size of ∇f·v for a Gaussian v; it keeps a direction nearly orthogonal to ∇f from
asking for more than float64 can give). Top-k selection is piecewise
constant: with Gaussian inputs no two candidate cosines lie within ~h of each other, so the
selected negatives are the same at x ± hv. Temperatures lie in [0.1, 1] (the sigmoid is not
saturated) and β = 0.05, so the regulariser terms contribute to every derivative.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

from amcl_keras.losses import (
    AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss, AMCLSimSiamLoss, BarlowTwinsLoss, InfoNCELoss,
    NTXentLoss, SimSiamLoss,
)

H = 1e-6
RTOL = 1e-6
DIRECTIONS = 2  # random directions per differentiable input
BATCH, HEADS, DIM, QUEUE, TOP_K = 5, 2, 6, 7, 3
BARLOW_BATCH, BARLOW_DIM = 6, 5
# φ's inputs not stopped (Barlow Twins' default stops them): the whole gradient, φ's input path included, is checked
AMCL = dict(beta=0.05, temperature_hidden_dim=4, temperature_min=0.1, temperature_max=1.0, dtype="float64",
            temperature_stop_gradient=False)
OBJECTIVES = ["authors", "normalized", "rectified"]
NON_CONTRASTIVE_OBJECTIVES = OBJECTIVES + ["weighted"]  # SimSiam and Barlow Twins only
NEGATIVES = ["topk", "hardest"]


def _variables(rng, names_shapes):
    return {name: tf.Variable(rng.normal(size=shape), dtype=tf.float64, name=name) for name, shape in names_shapes}


def _directional_errors(value_fn, variables, rng):
    """For DIRECTIONS random v: (tape ∇f·v, finite-difference ∇f·v, ‖∇f‖), the variables restored after."""
    with tf.GradientTape() as tape:
        value = value_fn()
    gradients = tape.gradient(value, variables)
    assert all(g is not None for g in gradients)
    norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in gradients)))
    originals = [v.numpy() for v in variables]
    pairs = []
    for _ in range(DIRECTIONS):
        direction = [rng.normal(size=o.shape) for o in originals]

        def at(step):
            for variable, original, d in zip(variables, originals, direction):
                variable.assign(original + step * d)
            return float(value_fn())

        numeric = (at(H) - at(-H)) / (2.0 * H)
        for variable, original in zip(variables, originals):
            variable.assign(original)
        analytic = sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(gradients, direction))
        pairs.append((analytic, numeric, norm))
    return pairs


def _check(loss, inputs, differentiable, stopped=(), with_phi=True, **options):
    """Check ∇ w.r.t. each name in `differentiable` (and φ's weights) against finite differences;
    the inputs named in `stopped` must get no gradient at all."""
    rng = np.random.default_rng(7)
    value_fn = lambda: loss(*inputs.values(), **options)  # noqa: E731
    assert value_fn().dtype == tf.float64
    groups = {name: [inputs[name]] for name in differentiable}
    if with_phi:
        phi = loss.temperature.trainable_variables
        assert len(phi) == 4 and all(w.dtype == "float64" for w in phi)
        groups["phi"] = phi
    for group, variables in groups.items():
        for analytic, numeric, norm in _directional_errors(value_fn, variables, rng):
            assert norm > 1e-2, (group, norm)  # the loss does depend on this input: the check is not empty
            scale = max(abs(numeric), norm)
            assert abs(analytic - numeric) <= RTOL * scale, (
                f"∇ w.r.t. {group}: tape {analytic!r} vs finite differences {numeric!r} "
                f"(error {abs(analytic - numeric) / scale:.2e} relative to {scale:.3e})"
            )
    if stopped:
        with tf.GradientTape() as tape:
            value = value_fn()
        gradients = tape.gradient(value, [inputs[name] for name in stopped])
        assert all(g is None for g in gradients), stopped


def _ntxent_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return _variables(rng, [("z1", (BATCH, HEADS, DIM)), ("z2", (BATCH, HEADS, DIM))])


def _infonce_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return _variables(rng, [("query", (BATCH, HEADS, DIM)), ("key", (BATCH, HEADS, DIM)), ("queue", (HEADS, QUEUE, DIM))])


def _simsiam_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return _variables(rng, [(name, (BATCH, HEADS, DIM)) for name in ("p1", "p2", "z1", "z2")])


def _barlow_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return _variables(rng, [("z1", (BARLOW_BATCH, HEADS, BARLOW_DIM)), ("z2", (BARLOW_BATCH, HEADS, BARLOW_DIM))])


@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_amcl_ntxent_gradients(objective, negatives):
    loss = AMCLNTXentLoss(DIM, negatives=negatives, top_k=TOP_K, objective=objective, **AMCL)
    _check(loss, _ntxent_inputs(), ["z1", "z2"])


@pytest.mark.parametrize("key_gradient", [False, True], ids=["key_stopped", "key_gradient"])
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_amcl_infonce_gradients(objective, negatives, key_gradient):
    loss = AMCLInfoNCELoss(DIM, negatives=negatives, top_k=TOP_K, objective=objective, **AMCL)
    if key_gradient:
        _check(loss, _infonce_inputs(), ["query", "key"], stopped=["queue"], key_gradient=True)
    else:
        _check(loss, _infonce_inputs(), ["query"], stopped=["key", "queue"])


@pytest.mark.parametrize("objective", NON_CONTRASTIVE_OBJECTIVES)
def test_amcl_simsiam_gradients(objective):
    loss = AMCLSimSiamLoss(DIM, objective=objective, **AMCL)
    _check(loss, _simsiam_inputs(), ["p1", "p2"], stopped=["z1", "z2"])


@pytest.mark.parametrize("objective", NON_CONTRASTIVE_OBJECTIVES + ["head_weighted"])  # head_weighted: Barlow only
def test_amcl_barlow_twins_gradients(objective):
    loss = AMCLBarlowTwinsLoss(BARLOW_DIM, BARLOW_BATCH, lambda_=0.1, objective=objective, **AMCL)
    _check(loss, _barlow_inputs(), ["z1", "z2"])


@pytest.mark.parametrize("loss", [NTXentLoss, InfoNCELoss, SimSiamLoss, BarlowTwinsLoss], ids=lambda loss: loss.__name__)
def test_baseline_gradients(loss):
    if loss is NTXentLoss:
        _check(NTXentLoss(0.5, dtype="float64"), _ntxent_inputs(), ["z1", "z2"], with_phi=False)
    elif loss is InfoNCELoss:
        _check(InfoNCELoss(0.2, dtype="float64"), _infonce_inputs(), ["query"], stopped=["key", "queue"], with_phi=False)
    elif loss is SimSiamLoss:
        _check(SimSiamLoss(dtype="float64"), _simsiam_inputs(), ["p1", "p2"], stopped=["z1", "z2"], with_phi=False)
    else:
        _check(BarlowTwinsLoss(lambda_=0.1, dtype="float64"), _barlow_inputs(), ["z1", "z2"], with_phi=False)


def _float64_cases():
    ntxent = tf.TensorSpec([BATCH, HEADS, DIM], tf.float64)
    barlow = tf.TensorSpec([BARLOW_BATCH, HEADS, BARLOW_DIM], tf.float64)
    queue = tf.TensorSpec([HEADS, QUEUE, DIM], tf.float64)
    return {
        "AMCLNTXentLoss": (lambda o: AMCLNTXentLoss(DIM, top_k=TOP_K, objective=o, **AMCL), [ntxent] * 2),
        "AMCLNTXentLoss_hardest": (lambda o: AMCLNTXentLoss(DIM, negatives="hardest", objective=o, **AMCL), [ntxent] * 2),
        "AMCLInfoNCELoss": (lambda o: AMCLInfoNCELoss(DIM, top_k=TOP_K, objective=o, **AMCL), [ntxent] * 2 + [queue]),
        "AMCLSimSiamLoss": (lambda o: AMCLSimSiamLoss(DIM, objective=o, **AMCL), [ntxent] * 4),
        "AMCLBarlowTwinsLoss": (lambda o: AMCLBarlowTwinsLoss(BARLOW_DIM, BARLOW_BATCH, objective=o, **AMCL), [barlow] * 2),
    }


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("name", list(_float64_cases()))
def test_a_float64_loss_computes_every_op_in_float64(name, objective):
    """Traced on float64 inputs: no op of the loss, of φ or of the gradient w.r.t. the inputs and
    φ's weights produces a tensor of another float type (a float32 cast anywhere would)."""
    make, specs = _float64_cases()[name]
    loss = make(objective)

    @tf.function
    def value_and_gradients(*inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            value = loss(*inputs)
        return value, tape.gradient(value, list(inputs) + loss.temperature.trainable_variables)

    graph = value_and_gradients.get_concrete_function(*specs).graph
    float_outputs = collections.Counter(
        (op.type, t.dtype.name) for op in graph.get_operations() for t in op.outputs if t.dtype.is_floating
    )
    not_float64 = {key: n for key, n in float_outputs.items() if key[1] != "float64"}
    assert not not_float64
    assert any(op in ("MatMul", "BatchMatMulV2") for op, _ in float_outputs)  # φ and the similarities are there


def test_the_default_dtype_is_still_float32_for_float64_and_float16_inputs():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, BATCH, HEADS, DIM))
    loss = AMCLNTXentLoss(DIM, top_k=TOP_K, temperature_hidden_dim=4)
    assert loss.compute_dtype == "float32" and all(w.dtype == "float32" for w in loss.temperature.weights)
    for dtype in ("float64", "float16"):
        value, stats = loss.loss_and_stats(*z.astype(dtype))
        assert value.dtype == tf.float32 and all(s.dtype == tf.float32 for s in stats.values())
    assert BarlowTwinsLoss()(*z.astype("float64")).dtype == tf.float32
