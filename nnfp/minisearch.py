"""Mini-search metrics: exhaustive sequence-search hit rates of degraded segments (NumPy only).

What `MiniSearchValidation` reports each epoch: row i of the queries is a degraded copy of
DB row i, and every query start is ranked against every DB start. No faiss, so training
never imports it.
"""

import numpy as np

__all__ = ["format_hit_rate_table", "sequence_hit_rates"]


def sequence_hit_rates(
    db_embeddings, query_embeddings, scopes=(1, 3, 5, 9, 11, 19), metric="ip", top=(1, 3, 10)
):
    """Exhaustive sequence-search hit rates of degraded queries against their sources.

    Rows are consecutive segments and query row i is a degraded copy of DB row i.
    For a scope of s segments the score of DB start j for query start i is
    `sum_{k<s} sim(q[i+k], db[j+k])`, with `sim` the dot product (`"ip"`) or the
    negative squared L2 distance (`"l2"`), over all i, j in [0, N-s]. The rank of
    the true start j == i is the number of starts scoring strictly higher.

    Returns:
        `{"scopes": [...], "top1": (n_scopes,), "top3": ..., "top10": ...,
        "mean_rank": (n_scopes,)}`; hit rates in percent, one key per `top`.
    """
    if metric not in ("ip", "l2"):
        raise ValueError(f"`metric` must be 'ip' or 'l2'. Received: metric={metric!r}")
    db = np.asarray(db_embeddings, dtype=np.float64)
    query = np.asarray(query_embeddings, dtype=np.float64)
    if db.ndim != 2 or db.shape != query.shape:
        raise ValueError(
            "`db_embeddings` and `query_embeddings` must be 2-D with equal shapes. "
            f"Received: {db.shape} and {query.shape}"
        )
    n_rows = len(db)
    scopes = [int(s) for s in scopes]
    if any(s < 1 or s > n_rows for s in scopes):
        raise ValueError(f"Every scope must be in [1, N={n_rows}]. Received: scopes={scopes}")
    sim = query @ db.T  # (N, N): sim[i, j] = sim(q_i, db_j)
    if metric == "l2":
        sim = 2.0 * sim - np.sum(query**2, axis=1)[:, None] - np.sum(db**2, axis=1)[None, :]

    ranks = {}
    acc = np.zeros((n_rows, n_rows))
    depth = 0  # number of diagonals summed into `acc` so far
    for scope in sorted(set(scopes)):
        n_starts = n_rows - scope + 1
        while depth < scope:
            acc = acc[: n_rows - depth, : n_rows - depth]
            acc += sim[depth:, depth:]
            depth += 1
        scores = acc[:n_starts, :n_starts]
        true = np.diagonal(scores)[:, None]
        ranks[scope] = np.count_nonzero(scores > true, axis=1)

    results = {"scopes": scopes}
    for k in top:
        results[f"top{int(k)}"] = np.array([100.0 * np.mean(ranks[s] < k) for s in scopes])
    results["mean_rank"] = np.array([np.mean(ranks[s]) for s in scopes])
    return results


def format_hit_rate_table(results, title="Sequence search"):
    """Renders `sequence_hit_rates` output as a text table (rows: metrics, columns: scopes)."""
    scopes = results["scopes"]
    row_keys = sorted(
        (key for key in results if key.startswith("top")), key=lambda key: int(key[3:])
    )
    rows = [(f"top-{key[3:]} (%)", results[key], "{:.1f}") for key in row_keys]
    rows.append(("mean rank", results["mean_rank"], "{:.2f}"))
    label_width = max(len(label) for label, _, _ in rows)
    header = " " * label_width + "".join(f"{f'{s} seg':>9}" for s in scopes)
    lines = [title, header, "-" * len(header)]
    for label, values, fmt in rows:
        cells = "".join(f"{fmt.format(v):>9}" for v in values)
        lines.append(f"{label:<{label_width}}{cells}")
    return "\n".join(lines)
