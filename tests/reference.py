"""NumPy references written from docs/METHOD.md §2–§4, pair by pair, in float64.

Deliberately loop-based and independent of the library's vectorised code.
"""

import numpy as np


def normalize(x):
    """x / ‖x‖, with the same floor as tf.math.l2_normalize (‖x‖² ≥ 1e-12): a zero vector stays 0."""
    return x / np.sqrt(np.maximum(np.sum(np.square(x), axis=-1, keepdims=True), 1e-12))


def phi(weights, x):
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in weights)
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def temperature(weights, a, b, t_min=1e-5, t_max=2.0):
    score = float(phi(weights, a) @ phi(weights, b))
    return t_min + (t_max - t_min) / (1.0 + np.exp(score))  # sigmoid(-score)


def omega(tau, dim):
    return 0.5 * dim * np.log(tau) + 1.0 / tau


def head_anchor_mean(heads, anchors, per_anchor):
    """Σ_c mean_i per_anchor(c, i): every loss's reduction (mean over anchors, sum over heads), as loops."""
    return sum(np.mean([per_anchor(c, i) for i in range(anchors)]) for c in range(heads))


def most_similar(similarities, negatives, top_k):
    """Indices of the negatives an anchor uses: the most similar by cosine (stable order), one for
    "hardest", else min(top_k, all)."""
    order = np.argsort(-np.asarray(similarities), kind="stable")
    return order[: 1 if negatives == "hardest" else min(top_k, len(order))]


def _views(z1, z2, head):
    z1 = np.asarray(z1, np.float64)
    z2 = np.asarray(z2, np.float64)
    if z1.ndim == 2:
        z1, z2 = z1[:, None], z2[:, None]
    return normalize(np.concatenate([z1[:, head], z2[:, head]])), z1.shape[0], z1.shape[1]


def _simclr_anchors(z1, z2):
    """(heads, 2N, anchor(c, i) → (views of head c, i, partner, negatives of i)) for the SimCLR losses."""
    heads = 1 if np.ndim(z1) == 2 else np.shape(z1)[1]
    n = np.shape(z1)[0]
    per_head = [_views(z1, z2, head)[0] for head in range(heads)]

    def anchor(c, i):
        partner = (i + n) % (2 * n)
        return per_head[c], partner, [j for j in range(2 * n) if j not in (i, partner)]

    return heads, 2 * n, anchor


def ntxent(z1, z2, tau):
    """Mean over the 2N anchors of −log(exp(s⁺/τ) / Σ_{j≠i} exp(s_ij/τ)), summed over heads."""
    heads, anchors, anchor = _simclr_anchors(z1, z2)

    def per_anchor(c, i):
        views, partner, negs = anchor(c, i)
        logits = {j: views[i] @ views[j] / tau for j in [partner] + negs}
        return -np.log(np.exp(logits[partner]) / sum(np.exp(v) for v in logits.values()))

    return head_anchor_mean(heads, anchors, per_anchor)


def amcl_ntxent(z1, z2, weights, beta, negatives, top_k, t_min=1e-5, t_max=2.0):
    """AMCL Eq. 2.1 ('hardest') or the top-k form, symmetric, mean over anchors, sum over heads."""
    heads, anchors, anchor = _simclr_anchors(z1, z2)

    def per_anchor(c, i):
        views, partner, negs = anchor(c, i)
        dim = views.shape[1]
        tau_p = temperature(weights, views[i], views[partner], t_min, t_max)
        loss = -(views[i] @ views[partner]) / tau_p + beta * omega(tau_p, dim)
        chosen = [negs[o] for o in most_similar([views[i] @ views[j] for j in negs], negatives, top_k)]
        taus = np.array([temperature(weights, views[i], views[j], t_min, t_max) for j in chosen])
        s = np.array([views[i] @ views[j] for j in chosen])
        if negatives == "hardest":
            return loss + s[0] / taus[0] - beta * omega(taus[0], dim)
        return loss + np.mean(s / taus) - beta * np.sum(np.log(taus) + 1.0 / taus)

    return head_anchor_mean(heads, anchors, per_anchor)


def _heads(x):
    x = np.asarray(x, np.float64)
    return x[:, None] if x.ndim == 2 else x


def _queue(queue, heads):
    queue = np.asarray(queue, np.float64)
    return queue[None] if queue.ndim == 2 else queue


def _moco_anchors(query, key, queue):
    """(heads, N, anchor(c, i) → (q_i, k_i, that head's normalised queue)) for the MoCo losses."""
    q, k = _heads(query), _heads(key)
    banks = [normalize(bank) for bank in _queue(queue, q.shape[1])]
    return q.shape[1], q.shape[0], lambda c, i: (normalize(q[i, c]), normalize(k[i, c]), banks[c])


def infonce(query, key, queue, tau):
    """Per head: mean over queries of −log(exp(q·k/τ) / (exp(q·k/τ) + Σ_j exp(q·u_j/τ)))."""
    heads, anchors, anchor = _moco_anchors(query, key, queue)

    def per_anchor(c, i):
        qi, ki, bank = anchor(c, i)
        logits = np.array([qi @ ki] + [qi @ u for u in bank]) / tau
        return -(logits[0] - np.log(np.sum(np.exp(logits))))

    return head_anchor_mean(heads, anchors, per_anchor)


def amcl_infonce(query, key, queue, weights, beta, negatives, top_k, t_min=1e-5, t_max=2.0):
    heads, anchors, anchor = _moco_anchors(query, key, queue)

    def per_anchor(c, i):
        qi, ki, bank = anchor(c, i)
        dim = qi.shape[-1]
        tau_p = temperature(weights, qi, ki, t_min, t_max)
        loss = -(qi @ ki) / tau_p + beta * omega(tau_p, dim)
        sims = bank @ qi
        chosen = most_similar(sims, negatives, top_k)
        taus = np.array([temperature(weights, qi, bank[j], t_min, t_max) for j in chosen])
        if negatives == "hardest":
            return loss + sims[chosen[0]] / taus[0] - beta * omega(taus[0], dim)
        return loss + np.mean(sims[chosen] / taus) - beta * np.sum(np.log(taus) + 1.0 / taus)

    return head_anchor_mean(heads, anchors, per_anchor)


def _correlation(a, b):
    n = a.shape[0]
    sa = (a - a.mean(0)) / (a.std(0, ddof=1) + 1e-9)
    sb = (b - b.mean(0)) / (b.std(0, ddof=1) + 1e-9)
    return sa.T @ sb / n


def barlow_twins(z1, z2, lambda_):
    z1, z2 = _heads(z1), _heads(z2)
    total = 0.0
    for c in range(z1.shape[1]):
        corr = _correlation(z1[:, c], z2[:, c])
        d = corr.shape[0]
        for l in range(d):
            for m in range(d):
                total += (1 - corr[l, l]) ** 2 if l == m else lambda_ * corr[l, m] ** 2
    return total


def amcl_barlow_twins(z1, z2, weights, beta, lambda_, t_min=1e-5, t_max=2.0):
    """Eq. 2.3; τ_lm from φ on the RAW batch-wise channel vectors (columns of z)."""
    z1, z2 = _heads(z1), _heads(z2)
    total = 0.0
    for c in range(z1.shape[1]):
        corr = _correlation(z1[:, c], z2[:, c])
        d = corr.shape[0]
        for l in range(d):
            for m in range(d):
                tau = temperature(weights, z1[:, c, l], z2[:, c, m], t_min, t_max)
                if l == m:
                    total += (1 - corr[l, l] / tau) ** 2 + beta * omega(tau, d)
                else:
                    total += lambda_ * corr[l, m] ** 2 / tau - beta * omega(tau, d)
    return total


def simsiam(p1, p2, z1, z2, weights=None, beta=0.0, t_min=1e-5, t_max=2.0):
    """Eq. 1.2 (weights None) or Eq. 2.2: mean over the batch, summed over heads."""
    p1, p2, z1, z2 = (_heads(x) for x in (p1, p2, z1, z2))
    dim = p1.shape[-1]
    total = 0.0
    for c in range(p1.shape[1]):
        values = []
        for i in range(p1.shape[0]):
            a, b = normalize(p1[i, c]), normalize(z2[i, c])
            e, f = normalize(p2[i, c]), normalize(z1[i, c])
            if weights is None:
                values.append(-0.5 * (a @ b) - 0.5 * (e @ f))
            else:
                t1 = temperature(weights, a, b, t_min, t_max)
                t2 = temperature(weights, e, f, t_min, t_max)
                values.append(-(a @ b) / (2 * t1) - (e @ f) / (2 * t2) + beta * (omega(t1, dim) + omega(t2, dim)))
        total += np.mean(values)
    return total


# --- the bounded objectives (docs/METHOD.md, "Bounded objectives"), pair by pair -----------------


def bounded_omega(tau, dim, center=None):
    """R_c(τ) = (d/2)·(log(τ/c) + c/τ − 1), c = 2/d by default."""
    c = 2.0 / dim if center is None else center
    return 0.5 * dim * (np.log(tau / c) + c / tau - 1.0)


def weighted_weights(tau):
    """The "weighted" objective's weights, from the definition: u = 2^tanh(log(τ̄/τ)/ln 2) with τ̄ the
    geometric mean of the given temperatures, then w = u / mean(u)."""
    tau = np.asarray(tau, dtype=np.float64)
    log_ratio = np.mean(np.log(tau)) - np.log(tau)
    u = 2.0 ** np.tanh(log_ratio / np.log(2.0))
    return u / np.mean(u)


def softplus(x):
    return np.log1p(np.exp(-abs(x))) + max(x, 0.0)


def _bounded_anchor(s_p, tau_p, s, taus, beta, dim, objective, center):
    """One anchor of a bounded objective: 'normalized' (per-pair-τ log-sum-exp over the given
    negatives) or 'rectified' (softplus of the authors' terms), + β·[R(τ⁺) + mean_n R(τ_n)]."""
    if objective == "normalized":
        logits = np.concatenate([[s_p / tau_p], s / taus])
        top = logits.max()
        loss = top + np.log(np.sum(np.exp(logits - top))) - s_p / tau_p
    else:
        loss = softplus(-s_p / tau_p) + np.mean([softplus(x) for x in s / taus])
    return loss + beta * (bounded_omega(tau_p, dim, center) + np.mean([bounded_omega(t, dim, center) for t in taus]))


def amcl_ntxent_bounded(z1, z2, weights, beta, objective, negatives="topk", top_k=100, t_min=1e-5, t_max=2.0,
                        center=None):
    """'normalized': per-pair-τ NT-Xent over all negatives; 'rectified': softplus of the authors'
    terms over the top-k / hardest negatives; both + β·[R(τ⁺) + mean_n R(τ_n)]."""
    heads, anchors, anchor = _simclr_anchors(z1, z2)

    def per_anchor(c, i):
        views, partner, negs = anchor(c, i)
        chosen = negs if objective == "normalized" else [
            negs[o] for o in most_similar([views[i] @ views[j] for j in negs], negatives, top_k)]
        taus = np.array([temperature(weights, views[i], views[j], t_min, t_max) for j in chosen])
        s = np.array([views[i] @ views[j] for j in chosen])
        tau_p = temperature(weights, views[i], views[partner], t_min, t_max)
        return _bounded_anchor(views[i] @ views[partner], tau_p, s, taus, beta, views.shape[1], objective, center)

    return head_anchor_mean(heads, anchors, per_anchor)


def amcl_infonce_bounded(query, key, queue, weights, beta, objective, negatives="topk", top_k=100, t_min=1e-5,
                         t_max=2.0, center=None):
    heads, anchors, anchor = _moco_anchors(query, key, queue)

    def per_anchor(c, i):
        qi, ki, bank = anchor(c, i)
        sims = bank @ qi
        chosen = np.arange(len(bank)) if objective == "normalized" else most_similar(sims, negatives, top_k)
        taus = np.array([temperature(weights, qi, bank[j], t_min, t_max) for j in chosen])
        tau_p = temperature(weights, qi, ki, t_min, t_max)
        return _bounded_anchor(qi @ ki, tau_p, sims[chosen], taus, beta, qi.shape[-1], objective, center)

    return head_anchor_mean(heads, anchors, per_anchor)


def simsiam_bounded(p1, p2, z1, z2, weights, beta, objective, t_min=1e-5, t_max=2.0, center=None):
    p1, p2, z1, z2 = (_heads(x) for x in (p1, p2, z1, z2))
    n, dim = p1.shape[0], p1.shape[-1]
    total = 0.0
    for c in range(p1.shape[1]):
        s1, s2, t1, t2 = [], [], [], []
        for i in range(n):
            a, b = normalize(p1[i, c]), normalize(z2[i, c])
            e, f = normalize(p2[i, c]), normalize(z1[i, c])
            s1.append(a @ b), s2.append(e @ f)
            t1.append(temperature(weights, a, b, t_min, t_max)), t2.append(temperature(weights, e, f, t_min, t_max))
        s1, s2, t1, t2 = map(np.array, (s1, s2, t1, t2))
        if objective == "normalized":  # Σ_i s_i/τ_i / Σ_j 1/τ_j per direction
            similarity = -0.5 * np.sum(s1 / t1) / np.sum(1 / t1) - 0.5 * np.sum(s2 / t2) / np.sum(1 / t2)
        elif objective == "weighted":
            similarity = -0.5 * np.mean(weighted_weights(t1) * s1) - 0.5 * np.mean(weighted_weights(t2) * s2)
        else:
            similarity = np.mean([0.5 * softplus(-x) + 0.5 * softplus(-y) for x, y in zip(s1 / t1, s2 / t2)])
        regularizer = np.mean([beta * (bounded_omega(x, dim, center) + bounded_omega(y, dim, center))
                               for x, y in zip(t1, t2)])
        total += similarity + regularizer
    return total


def barlow_twins_bounded(z1, z2, weights, beta, lambda_, objective, t_min=1e-5, t_max=2.0, center=None):
    z1, z2 = _heads(z1), _heads(z2)
    total = 0.0
    head_losses, head_temperatures = [], []  # "head_weighted": each head's plain loss and geometric-mean τ
    for c in range(z1.shape[1]):
        corr = _correlation(z1[:, c], z2[:, c])
        d = corr.shape[0]
        tau = np.array([[temperature(weights, z1[:, c, l], z2[:, c, m], t_min, t_max) for m in range(d)]
                        for l in range(d)])
        inv = 1.0 / tau
        if objective == "head_weighted":
            plain = sum((1 - corr[l, l]) ** 2 if l == m else lambda_ * corr[l, m] ** 2
                        for l in range(d) for m in range(d))
            head_losses.append(plain)
            head_temperatures.append(np.exp(np.mean(np.log(tau))))
            total += beta * sum(bounded_omega(t, d, center) for t in tau.ravel())
            continue
        if objective == "weighted":
            off = ~np.eye(d, dtype=bool)
            w_diag, w_off = weighted_weights(np.diag(tau)), np.zeros((d, d))
            w_off[off] = weighted_weights(tau[off]) if d > 1 else []
            for l in range(d):
                for m in range(d):
                    if l == m:
                        total += w_diag[l] * (1 - corr[l, l]) ** 2
                    else:
                        total += lambda_ * w_off[l, m] * corr[l, m] ** 2
                    total += beta * bounded_omega(tau[l, m], d, center)
            continue
        if objective == "normalized":
            diag_mean = np.mean([inv[l, l] for l in range(d)])
            off_mean = np.mean([inv[l, m] for l in range(d) for m in range(d) if l != m])
        else:
            diag_mean = off_mean = 1.0
        for l in range(d):
            for m in range(d):
                if l == m:
                    total += (1 - corr[l, l] * inv[l, l] / diag_mean) ** 2
                else:
                    total += lambda_ * corr[l, m] ** 2 * inv[l, m] / off_mean
                total += beta * bounded_omega(tau[l, m], d, center)
    if head_losses:
        total += float(np.dot(weighted_weights(head_temperatures), head_losses))
    return total
