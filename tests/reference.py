"""NumPy references written from AMCL_METHOD.md §2–§4, pair by pair, in float64.

Deliberately loop-based and independent of the library's vectorised code.
"""

import numpy as np


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def phi(weights, x):
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in weights)
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def temperature(weights, a, b, t_min=1e-5, t_max=2.0):
    score = float(phi(weights, a) @ phi(weights, b))
    return t_min + (t_max - t_min) / (1.0 + np.exp(score))  # sigmoid(-score)


def omega(tau, dim):
    return 0.5 * dim * np.log(tau) + 1.0 / tau


def _views(z1, z2, head):
    z1 = np.asarray(z1, np.float64)
    z2 = np.asarray(z2, np.float64)
    if z1.ndim == 2:
        z1, z2 = z1[:, None], z2[:, None]
    return normalize(np.concatenate([z1[:, head], z2[:, head]])), z1.shape[0], z1.shape[1]


def ntxent(z1, z2, tau):
    """Mean over the 2N anchors of −log(exp(s⁺/τ) / Σ_{j≠i} exp(s_ij/τ)), summed over heads."""
    heads = 1 if np.ndim(z1) == 2 else np.shape(z1)[1]
    total = 0.0
    for head in range(heads):
        views, n, _ = _views(z1, z2, head)
        losses = []
        for i in range(2 * n):
            partner = (i + n) % (2 * n)
            logits = {j: views[i] @ views[j] / tau for j in range(2 * n) if j != i}
            denominator = sum(np.exp(v) for v in logits.values())
            losses.append(-np.log(np.exp(logits[partner]) / denominator))
        total += np.mean(losses)
    return total


def amcl_ntxent(z1, z2, weights, beta, negatives, top_k, t_min=1e-5, t_max=2.0):
    """AMCL Eq. 2.1 ('hardest') or the top-k form, symmetric, mean over anchors, sum over heads."""
    heads = 1 if np.ndim(z1) == 2 else np.shape(z1)[1]
    total = 0.0
    for head in range(heads):
        views, n, _ = _views(z1, z2, head)
        dim = views.shape[1]
        losses = []
        for i in range(2 * n):
            partner = (i + n) % (2 * n)
            tau_p = temperature(weights, views[i], views[partner], t_min, t_max)
            loss = -(views[i] @ views[partner]) / tau_p + beta * omega(tau_p, dim)
            negs = [j for j in range(2 * n) if j not in (i, partner)]
            sims = np.array([views[i] @ views[j] for j in negs])
            order = np.argsort(-sims, kind="stable")
            if negatives == "hardest":
                j = negs[order[0]]
                tau_n = temperature(weights, views[i], views[j], t_min, t_max)
                loss += (views[i] @ views[j]) / tau_n - beta * omega(tau_n, dim)
            else:
                chosen = [negs[o] for o in order[: min(top_k, len(negs))]]
                taus = np.array([temperature(weights, views[i], views[j], t_min, t_max) for j in chosen])
                s = np.array([views[i] @ views[j] for j in chosen])
                loss += np.mean(s / taus) - beta * np.sum(np.log(taus) + 1.0 / taus)
            losses.append(loss)
        total += np.mean(losses)
    return total
