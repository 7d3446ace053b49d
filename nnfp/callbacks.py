"""Training callbacks: mini-search validation and similarity-matrix images."""

import keras
import numpy as np

from nnfp.minisearch import sequence_hit_rates

__all__ = ["EpochProgress", "MiniSearchValidation", "SimilarityMatrixImages", "mini_search_line", "similarity_image"]

# Embedding name -> (log-key stem, search metric). f is compared by L2 distance and the
# normalised embeddings by inner product, as the official seed (argmin L2 == argmax IP on
# unit vectors).
_EMBEDDINGS = {"f": ("f", "l2"), "L2(f)": ("l2f", "ip"), "g(f)": ("gf", "ip")}


def _embed_batches(embed, waveforms, batch_size):
    """`embed` (a model's `embed_all`, as a `tf.function`) over an array in batches -> dict of (N, dim) arrays."""
    import tensorflow as tf

    parts = {key: [] for key in _EMBEDDINGS}
    for start in range(0, len(waveforms), batch_size):
        out = embed(tf.constant(waveforms[start : start + batch_size]))
        for key in parts:
            parts[key].append(out[key].numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


class MiniSearchValidation(keras.callbacks.Callback):
    """Epoch-end search of validation replicas against their originals.

    Embeds the validation originals (the mini database) and their degraded
    replicas (the queries), then for each query length in `scopes` (consecutive
    segments) reports top-1/3/10 hit rates and mean rank of the true position, for
    f, L2(f) and g(f). Results go into `logs` as `ms_<emb>_<metric>_s<scope>`
    (e.g. `ms_gf_top1_s1`), so ModelCheckpoint, EarlyStopping, TensorBoard and W&B
    see them: put this callback first in the list.

    Args:
        originals: (N, segment_samples) clean validation segments, consecutive in time.
        replicas: (N, segment_samples) degraded copies, row i of originals i.
        scopes: query lengths in segments.
        batch_size: inference batch size.
        every: run every `every` epochs.
        verbose: print one line per epoch (g(f) top-1 at each scope); the full
            results stay in `logs` and in `last_results` (`format_hit_rate_table`
            renders them as tables).

    Example:
    >>> cb = MiniSearchValidation(val_originals, val_replicas)
    >>> model.fit(train_ds, callbacks=[cb, keras.callbacks.ModelCheckpoint(...)])

    Follows the official neural-audio-fp `mini_search_validation`.
    """

    def __init__(self, originals, replicas, scopes=(1, 3, 5, 9, 11, 19), batch_size=256, every=1, verbose=1):
        super().__init__()
        if len(originals) != len(replicas):
            raise ValueError(
                f"originals and replicas must have the same length. Received: {len(originals)} and {len(replicas)}"
            )
        if len(originals) < max(scopes):
            raise ValueError(
                f"need at least max(scopes)={max(scopes)} validation segments. Received: {len(originals)}"
            )
        self.originals = np.asarray(originals, "float32")
        self.replicas = np.asarray(replicas, "float32")
        self.scopes = tuple(scopes)
        self.batch_size = batch_size
        self.every = every
        self.verbose = verbose
        self.last_results = None
        self._embed = self._embed_model = None

    def evaluate(self):
        """Run the mini search now; returns {embedding name: hit-rate dict}."""
        import tensorflow as tf

        if self._embed is None or self._embed_model is not self.model:
            # One tf.function per model: later epochs reuse its trace instead of retracing.
            self._embed = tf.function(self.model.embed_all, reduce_retracing=True)
            self._embed_model = self.model
        db = _embed_batches(self._embed, self.originals, self.batch_size)
        queries = _embed_batches(self._embed, self.replicas, self.batch_size)
        return {
            name: sequence_hit_rates(db[name], queries[name], scopes=self.scopes, metric=metric)
            for name, (_, metric) in _EMBEDDINGS.items()
        }

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        results = self.evaluate()
        self.last_results = results
        if logs is not None:
            for name, result in results.items():
                stem = _EMBEDDINGS[name][0]
                for i, scope in enumerate(result["scopes"]):
                    for metric in ("top1", "top3", "top10", "mean_rank"):
                        logs[f"ms_{stem}_{metric}_s{scope}"] = float(result[metric][i])
        if self.verbose:
            print(mini_search_line(results["g(f)"]))


def mini_search_line(result):
    """One line of g(f) top-1 hit rates per scope (segments), e.g. `mini-search g(f) top-1 %: 1 seg 41.2 | 3 seg 70.3`."""
    pairs = zip(result["scopes"], result["top1"], strict=True)
    cells = " | ".join(f"{scope} seg {top1:.1f}" for scope, top1 in pairs)
    return f"mini-search g(f) top-1 %: {cells}"


class EpochProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar without the mini-search scalars, plus one compact mini-search line.

    `MiniSearchValidation` writes 4 metrics x 3 embeddings x each scope into `logs`
    (72 scalars with the default scopes) for checkpoints, CSV, TensorBoard and W&B.
    This logger leaves the `ms_*` keys out of the epoch line and prints g(f) top-1 at
    each scope on a line of its own. Passing it to `fit` replaces Keras' default
    progress bar; `fit(verbose=...)` still sets its verbosity.

    Example:
    >>> model.fit(ds, callbacks=[MiniSearchValidation(o, r, verbose=0), EpochProgress()])
    """

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        super().on_epoch_end(epoch, {k: v for k, v in logs.items() if not k.startswith("ms_")})
        top1 = {int(k.rsplit("_s", 1)[1]): v for k, v in logs.items() if k.startswith("ms_gf_top1_s")}
        if self.verbose and top1:
            scopes = sorted(top1)
            print(mini_search_line({"scopes": scopes, "top1": [top1[s] for s in scopes]}))


def similarity_image(similarity):
    """(rows, cols) similarities in [-1, 1] -> (rows, cols, 3) uint8 RGB (viridis)."""
    from nnfp.extras import require

    colormaps = require("matplotlib", "tensorboard", "The similarity images (train.similarity_images)").colormaps
    scaled = (np.clip(np.asarray(similarity, "float32"), -1.0, 1.0) + 1.0) / 2.0
    return (colormaps["viridis"](scaled)[..., :3] * 255).astype("uint8")


class SimilarityMatrixImages(keras.callbacks.Callback):
    """Log the anchor x replica similarity matrix of a fixed batch to TensorBoard each epoch.

    Args:
        anchors: (n, segment_samples) waveforms.
        replicas: (n, segment_samples) their augmented replicas.
        log_dir: TensorBoard directory (images go to `<log_dir>/similarity`).

    Example:
    >>> SimilarityMatrixImages(val_originals[:64], val_replicas[:64], "runs/x/logs")

    A well-trained model shows a bright diagonal on a dark background.
    """

    def __init__(self, anchors, replicas, log_dir):
        super().__init__()
        self.anchors = np.asarray(anchors, "float32")
        self.replicas = np.asarray(replicas, "float32")
        self.log_dir = str(log_dir)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.log_dir}/similarity")
        sim = self.model.batch_similarity(self.anchors, self.replicas)
        image = similarity_image(keras.ops.convert_to_numpy(sim))
        with self._writer.as_default():
            tf.summary.image("batch_similarity", image[None], step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
