"""Contrastive losses for fingerprint training, as `keras.losses.Loss` objects.

Both losses take `y_true` = the source id of every row of the batch (rows with the
same id are views of the same audio segment) and `y_pred` = the batch's
L2-normalised embeddings, and return one loss per row. `FingerPrinter` builds the
ids itself: anchors get `0..n_anchors-1`, replica j gets `j % n_anchors`.
"""

import keras
from keras import ops

__all__ = ["NTXent", "OnlineTripletLoss", "build_loss", "pair_masks", "similarity_matrix", "source_ids"]

_TRIPLET_MODES = ("semi-hard", "all", "hard")


def source_ids(n_anchors, n_replicas):
    """Source id of each row of a batch `[anchors; replicas]` with replicas tiled over anchors."""
    anchors = ops.arange(n_anchors, dtype="int32")
    replicas = ops.mod(ops.arange(n_replicas, dtype="int32"), n_anchors)
    return ops.concatenate([anchors, replicas], axis=0)


def similarity_matrix(anchors, replicas):
    """Inner products `(n_anchors, n_replicas)` between two sets of embeddings."""
    return ops.matmul(anchors, ops.transpose(replicas))


def pair_masks(labels):
    """Boolean (batch, batch) masks: positives (same source id, not self) and not-self."""
    labels = ops.reshape(labels, (-1,))
    same = ops.equal(labels[:, None], labels[None, :])
    not_self = ops.logical_not(ops.eye(ops.shape(labels)[0], dtype="bool"))
    return ops.logical_and(same, not_self), not_self


@keras.saving.register_keras_serializable(package="nnfp")
class NTXent(keras.losses.Loss):
    """Normalised temperature-scaled cross entropy (SimCLR's NT-Xent), several replicas per anchor.

    For each row i of the batch, every other row k competes in a softmax over
    `z_i . z_k / temperature`; the loss of row i is the mean negative log
    probability of its positives (rows with the same source id). With one replica
    per anchor this is exactly SimCLR's loss in both directions, averaged over the
    batch (the official neural-audio-fp code sums the two directions: twice this
    value); with several replicas per anchor (`n_anchors < batch / 2`, the original's
    `TR_N_ANCHOR`) it is the multi-positive form of Khosla et al. 2020 (L_out).

    Args:
        temperature: softmax temperature tau (paper: 0.05).

    Inputs: `y_true` (batch,) source ids, `y_pred` (batch, d) L2-normalised embeddings.
    Output: per-row losses, reduced by `reduction` (default: mean).

    Example:
    >>> loss = NTXent(temperature=0.05)
    >>> value = loss(source_ids(4, 4), embeddings)  # embeddings: (8, d)

    Follows Chen et al. 2020 (SimCLR) as used by Chang et al. 2021 (eq. 1).
    """

    def __init__(self, temperature=0.05, name="nt_xent", **kwargs):
        super().__init__(name=name, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive. Received: temperature={temperature}")
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        positives, not_self = pair_masks(y_true)
        logits = ops.matmul(y_pred, ops.transpose(y_pred)) / self.temperature  # (batch, batch)
        logits = ops.where(not_self, logits, -1e9)
        log_prob = logits - ops.logsumexp(logits, axis=1, keepdims=True)
        positives = ops.cast(positives, log_prob.dtype)
        n_positives = ops.maximum(ops.sum(positives, axis=1), 1.0)
        return -ops.sum(positives * log_prob, axis=1) / n_positives  # (batch,)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class OnlineTripletLoss(keras.losses.Loss):
    """Online triplet loss over all rows of a batch (the Now Playing baseline).

    Distances are squared Euclidean between embeddings. Every row is an anchor;
    its positives share its source id and all other rows are negatives. Modes:
    `"semi-hard"` (FaceNet: for each anchor-positive pair, the closest negative
    farther than the positive, else the farthest negative), `"hard"` (hardest
    positive against hardest negative), `"all"` (every valid triplet). A row's loss
    is the mean over its triplets of `max(d_ap - d_an + margin, 0)`.

    Args:
        margin: triplet margin.
        mode: `"semi-hard"`, `"all"` or `"hard"`.

    Inputs/outputs as `NTXent`. Memory is O(batch^3) for "semi-hard" and "all".

    Example:
    >>> loss = OnlineTripletLoss(margin=0.5, mode="semi-hard")
    >>> value = loss(source_ids(4, 4), embeddings)

    Follows Schroff et al. 2015 and Gfeller et al. 2017 (Now Playing).
    """

    def __init__(self, margin=0.5, mode="semi-hard", name="online_triplet", **kwargs):
        super().__init__(name=name, **kwargs)
        if mode not in _TRIPLET_MODES:
            raise ValueError(f"mode must be one of {_TRIPLET_MODES}. Received: mode={mode!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0. Received: margin={margin}")
        self.margin = float(margin)
        self.mode = mode

    def call(self, y_true, y_pred):
        positives, not_self = pair_masks(y_true)
        negatives = ops.logical_and(not_self, ops.logical_not(positives))
        squared = ops.sum(ops.square(y_pred), axis=1)
        distances = squared[:, None] + squared[None, :] - 2.0 * ops.matmul(y_pred, ops.transpose(y_pred))
        distances = ops.maximum(distances, 0.0)  # (batch, batch)
        big = 1e9
        if self.mode == "hard":
            hardest_positive = ops.max(ops.where(positives, distances, -big), axis=1)
            hardest_negative = ops.min(ops.where(negatives, distances, big), axis=1)
            return ops.relu(hardest_positive - hardest_negative + self.margin)
        d_ap = distances[:, :, None]  # (anchor, positive, 1)
        d_an = distances[:, None, :]  # (anchor, 1, negative)
        if self.mode == "all":
            valid = ops.logical_and(positives[:, :, None], negatives[:, None, :])
            losses = ops.where(valid, ops.relu(d_ap - d_an + self.margin), 0.0)
            count = ops.maximum(ops.sum(ops.cast(valid, losses.dtype), axis=(1, 2)), 1.0)
            return ops.sum(losses, axis=(1, 2)) / count
        farther = ops.logical_and(negatives[:, None, :], d_an > d_ap)  # (anchor, positive, negative)
        semi_hard = ops.min(ops.where(farther, d_an, big), axis=2)  # (anchor, positive)
        farthest = ops.max(ops.where(negatives, distances, -big), axis=1, keepdims=True)
        chosen = ops.where(ops.any(farther, axis=2), semi_hard, farthest)
        losses = ops.relu(distances - chosen + self.margin)
        positives = ops.cast(positives, losses.dtype)
        return ops.sum(losses * positives, axis=1) / ops.maximum(ops.sum(positives, axis=1), 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, mode=self.mode)
        return config


def build_loss(config):
    """The loss named by the config's `loss` section: `NTXent` or `OnlineTripletLoss` (`loss.type`)."""
    loss = config["loss"]
    if loss["type"] == "ntxent":
        return NTXent(temperature=loss["temperature"])
    return OnlineTripletLoss(margin=loss["margin"], mode=loss["mode"])
