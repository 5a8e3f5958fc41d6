import numpy as np

from amcl_keras import evaluation


def _numpy_knn(train, train_labels, query, classes, k, t):
    """Straightforward reference: sort every query's similarities, weight the top k."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    predictions = []
    for q in query:
        sims = train @ q
        order = np.argsort(-sims)[:k]
        votes = np.zeros(classes)
        for j in order:
            votes[train_labels[j]] += np.exp(sims[j] / t)
        predictions.append(int(np.argmax(votes)))
    return np.array(predictions)


def test_knn_matches_numpy_reference(rng):
    train = rng.normal(size=(300, 6))
    labels = rng.integers(0, 4, size=300)
    query = rng.normal(size=(50, 6))
    for k, t in [(1, 0.1), (10, 0.1), (200, 0.5), (500, 0.1)]:
        got = evaluation.knn_predict(train, labels, query, 4, k=k, temperature=t, chunk=16)
        np.testing.assert_array_equal(got, _numpy_knn(train, labels, query, 4, min(k, 300), t))


def test_linear_probe_on_separable_data(rng):
    centres = rng.normal(size=(3, 10)) * 4
    labels = rng.integers(0, 3, size=600)
    features = centres[labels] + rng.normal(size=(600, 10))
    accuracy = evaluation.linear_probe_accuracy(features[:500], labels[:500], features[500:], labels[500:], epochs=20)
    assert accuracy > 0.97
    shuffled = rng.permutation(labels[500:])  # labels unrelated to features → chance level
    chance = evaluation.linear_probe_accuracy(features[:500], labels[:500], features[500:], shuffled, epochs=20)
    assert chance < 0.6
