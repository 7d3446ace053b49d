"""`nnfp.minisearch`: NumPy sequence hit rates of validation pairs, against a naive double loop."""

import numpy as np
import pytest

from nnfp.minisearch import format_hit_rate_table, sequence_hit_rates


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def noisy(x, rng, noise):
    return unit(x + noise * rng.standard_normal(x.shape) / np.sqrt(x.shape[-1]))


def naive_hit_ranks(db, query, scope, metric):
    """Double loop over (query start, DB start): rank of the true start."""
    db = db.astype(np.float64)
    query = query.astype(np.float64)
    n_starts = len(db) - scope + 1
    ranks = []
    for i in range(n_starts):
        scores = []
        for j in range(n_starts):
            q, r = query[i : i + scope], db[j : j + scope]
            if metric == "ip":
                scores.append(np.sum(q * r))
            else:
                scores.append(-np.sum((q - r) ** 2))
        ranks.append(sum(score > scores[i] for score in scores))
    return np.array(ranks)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_hit_rates_match_naive_double_loop(metric):
    rng = np.random.default_rng(1)
    db = unit(rng.standard_normal((40, 8)))
    query = noisy(db, rng, 2.5)  # hard enough that ranks spread out
    scopes = (1, 3, 5, 9)
    results = sequence_hit_rates(db, query, scopes=scopes, metric=metric)
    assert results["scopes"] == list(scopes)
    for column, scope in enumerate(scopes):
        ranks = naive_hit_ranks(db, query, scope, metric)
        assert results["mean_rank"][column] == pytest.approx(ranks.mean(), abs=1e-12)
        for k in (1, 3, 10):
            assert results[f"top{k}"][column] == pytest.approx(100 * np.mean(ranks < k), abs=1e-12)
    # The case must be non-trivial for the comparison to mean something.
    assert 0 < results["top1"][0] < 100
    assert results["mean_rank"][0] > 1


def test_hit_rates_known_answers():
    rng = np.random.default_rng(2)
    db = unit(rng.standard_normal((500, 32)))
    clean = sequence_hit_rates(db, noisy(db, rng, 0.1))
    np.testing.assert_array_equal(clean["top1"], 100.0)
    np.testing.assert_array_equal(clean["mean_rank"], 0.0)

    unrelated = sequence_hit_rates(db, unit(rng.standard_normal((500, 32))), scopes=(1, 5))
    # Chance: top-k = k / n_starts, mean rank = (n_starts - 1) / 2.
    for column, scope in enumerate((1, 5)):
        n_starts = 500 - scope + 1
        assert unrelated["top10"][column] == pytest.approx(100 * 10 / n_starts, abs=3.0)
        assert unrelated["mean_rank"][column] == pytest.approx((n_starts - 1) / 2, rel=0.1)


def test_hit_rates_longer_scope_helps():
    rng = np.random.default_rng(3)
    db = unit(rng.standard_normal((3000, 128)))
    query = noisy(db, rng, 8.0)  # one segment is ambiguous, a sequence is not
    results = sequence_hit_rates(db, query)
    assert results["top1"][0] < 10
    assert results["top1"][-1] > 95
    assert np.all(np.diff(results["top1"]) >= 0)


def test_hit_rates_errors_and_table():
    db = unit(np.random.default_rng(4).standard_normal((10, 4)))
    with pytest.raises(ValueError, match="metric='cos'"):
        sequence_hit_rates(db, db, metric="cos")
    with pytest.raises(ValueError, match="scopes"):
        sequence_hit_rates(db, db, scopes=(1, 11))
    with pytest.raises(ValueError, match="equal shapes"):
        sequence_hit_rates(db, db[:5])
    table = format_hit_rate_table(sequence_hit_rates(db, db, scopes=(1, 3)), title="val")
    lines = table.splitlines()
    assert lines[0] == "val"
    assert "1 seg" in lines[1] and "3 seg" in lines[1]
    assert lines[3].split() == ["top-1", "(%)", "100.0", "100.0"]
    assert lines[-1].split() == ["mean", "rank", "0.00", "0.00"]
