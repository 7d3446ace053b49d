import numpy as np
import pytest

from nnfp.losses import NTXent, OnlineTripletLoss, similarity_matrix, source_ids


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _original_ntxent(a, b, tau):
    """The official neural-audio-fp loss (one replica per anchor): loss_a + loss_b."""
    n = len(a)
    off = ~np.eye(n, dtype=bool)
    aa = (a @ a.T / tau)[off].reshape(n, n - 1)
    bb = (b @ b.T / tau)[off].reshape(n, n - 1)
    loss_a = -_log_softmax(np.concatenate([a @ b.T / tau, aa], 1))[np.arange(n), np.arange(n)].mean()
    loss_b = -_log_softmax(np.concatenate([b @ a.T / tau, bb], 1))[np.arange(n), np.arange(n)].mean()
    return loss_a + loss_b


def _multi_positive(z, labels, tau):
    """Naive loop reference of the multi-positive form."""
    losses = []
    for i in range(len(z)):
        others = [k for k in range(len(z)) if k != i]
        logits = np.array([z[i] @ z[k] / tau for k in others])
        log_den = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
        pos = [j for j, k in enumerate(others) if labels[k] == labels[i]]
        losses.append(-np.mean([logits[j] - log_den for j in pos]))
    return np.mean(losses)


@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0])
def test_ntxent_matches_original_one_replica(tau):
    rng = np.random.default_rng(0)
    a, b = _unit(rng, 6, 16), _unit(rng, 6, 16)
    b = (a + b) / np.linalg.norm(a + b, axis=1, keepdims=True)
    value = float(NTXent(tau)(source_ids(6, 6), np.concatenate([a, b])))
    assert value == pytest.approx(_original_ntxent(a.astype("float64"), b.astype("float64"), tau) / 2, rel=1e-4)


def test_ntxent_several_replicas_per_anchor():
    rng = np.random.default_rng(1)
    z = _unit(rng, 4 + 12, 8)
    labels = np.asarray(source_ids(4, 12))
    np.testing.assert_array_equal(labels, [0, 1, 2, 3] * 4)
    value = float(NTXent(0.05)(labels, z))
    assert value == pytest.approx(_multi_positive(z.astype("float64"), labels, 0.05), rel=1e-4)


def test_ntxent_is_small_for_perfect_pairs_and_rejects_bad_tau():
    rng = np.random.default_rng(2)
    a = _unit(rng, 8, 64)
    assert float(NTXent(0.05)(source_ids(8, 8), np.concatenate([a, a]))) < 0.05
    with pytest.raises(ValueError, match="temperature"):
        NTXent(0.0)


def _triplet_reference(z, labels, margin, mode):
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    out = []
    for a in range(len(z)):
        pos = [p for p in range(len(z)) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(len(z)) if labels[n] != labels[a]]
        if mode == "hard":
            out.append(max(0.0, max(d[a, pos]) - min(d[a, neg]) + margin))
            continue
        if mode == "all":
            out.append(np.mean([max(0.0, d[a, p] - d[a, n] + margin) for p in pos for n in neg]))
            continue
        row = []
        for p in pos:
            farther = [d[a, n] for n in neg if d[a, n] > d[a, p]]
            chosen = min(farther) if farther else max(d[a, neg])
            row.append(max(0.0, d[a, p] - chosen + margin))
        out.append(np.mean(row))
    return np.mean(out)


@pytest.mark.parametrize("mode", ["semi-hard", "all", "hard"])
def test_triplet_matches_reference(mode):
    rng = np.random.default_rng(3)
    z = _unit(rng, 5 + 10, 6)
    labels = np.asarray(source_ids(5, 10))
    value = float(OnlineTripletLoss(margin=0.5, mode=mode)(labels, z))
    assert value == pytest.approx(_triplet_reference(z.astype("float64"), labels, 0.5, mode), rel=1e-4, abs=1e-6)


def test_triplet_bad_mode_and_similarity_matrix():
    with pytest.raises(ValueError, match="mode"):
        OnlineTripletLoss(mode="easy")
    rng = np.random.default_rng(4)
    a, b = _unit(rng, 3, 5), _unit(rng, 4, 5)
    np.testing.assert_allclose(np.asarray(similarity_matrix(a, b)), a @ b.T, atol=1e-6)
