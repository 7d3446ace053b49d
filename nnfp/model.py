"""The fingerprinter: raw audio -> mel -> (SpecAugment) -> f(.) -> g(.) -> L2."""

import keras
from keras import ops

# The parts are imported so that loading a saved FingerPrinter finds their registered classes.
from nnfp.augment import SpecAugment  # noqa: F401
from nnfp.encoder import DivideAndEncode, Encoder  # noqa: F401
from nnfp.frontend import LogMelSpectrogram  # noqa: F401
from nnfp.losses import pair_masks, similarity_matrix, source_ids

__all__ = ["FingerPrinter"]


def _l2_normalize(x):
    # float32 whatever the parts computed in (train.precision: mixed_bfloat16), so the loss
    # and the fingerprints are float32.
    x = ops.cast(x, "float32")
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


def _float32_config(config, layer):
    """`layer`'s `config` computing in float32: mixed precision is a training setting
    (`train.precision`), so a saved model computes as a float32 one (its weights are float32)."""
    policy = layer.dtype_policy
    if policy.compute_dtype != policy.variable_dtype:
        config = {**config, "dtype": policy.variable_dtype}
    return config


def _serialize_float32(layer):
    serialized = keras.saving.serialize_keras_object(layer)
    return {**serialized, "config": _float32_config(serialized["config"], layer)}


@keras.saving.register_keras_serializable(package="nnfp")
class FingerPrinter(keras.Model):
    """Neural audio fingerprinter g(f(.)) taking raw waveforms.

    Preprocessing lives in the model, so a saved or exported model takes audio:
    `frontend` turns waveforms into log-mel spectrograms, `spec_augment` masks them
    in training only, `encoder` is f(.), `projection` is g(.), and the output is
    L2-normalised. Training batches are `(anchors, replicas)` waveform pairs;
    `train_step` embeds them together (one SpecAugment mask for the whole batch,
    as the paper), builds the source ids of the rows and calls the compiled
    contrastive loss.

    Args:
        frontend: a `LogMelSpectrogram`.
        encoder: an `Encoder` (f).
        projection: a `DivideAndEncode` (g).
        spec_augment: a `SpecAugment`, or None for no spectrogram masking.

    Input `(batch, segment_samples)` float32 waveforms; output `(batch, d)` unit vectors.
    A YAML config builds each part from its section, whose keys are the part's
    constructor arguments (`nnfp.training.build_model`).

    Example:
    >>> model = FingerPrinter(LogMelSpectrogram(), Encoder(width=0.25), DivideAndEncode(128))
    >>> model.build((None, model.segment_samples))
    >>> model.compile(optimizer="adam", loss=NTXent(0.05))
    >>> model.fit(pairs_dataset, epochs=1)  # batches of (anchors, replicas)

    Follows Chang et al., "Neural Audio Fingerprint for High-specific Audio
    Retrieval based on Contrastive Learning", ICASSP 2021.
    """

    def __init__(self, frontend, encoder, projection, spec_augment=None, **kwargs):
        super().__init__(**kwargs)
        self.frontend = frontend
        self.encoder = encoder
        self.projection = projection
        self.spec_augment = spec_augment
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.positive_tracker = keras.metrics.Mean(name="pos_sim")
        self.negative_tracker = keras.metrics.Mean(name="neg_sim")
        self.accuracy_tracker = keras.metrics.Mean(name="batch_top1")

    @property
    def segment_samples(self):
        return self.frontend.segment_samples

    @property
    def embedding_dim(self):
        return self.projection.embedding_dim

    def build(self, input_shape):
        # Deserialised parts arrive already built from their own build configs.
        mel_shape = self.frontend.compute_output_shape(input_shape)
        if not self.encoder.built:
            self.encoder.build(mel_shape)
        if not self.projection.built:
            self.projection.build(self.encoder.compute_output_shape(mel_shape))
        self.built = True

    def get_build_config(self):
        return {"input_shape": [None, self.segment_samples]}

    def build_from_config(self, config):
        self.build(tuple(config["input_shape"]))

    def call(self, waveforms, training=False):
        return self._embed(self.frontend(waveforms), training)  # mel: (batch, n_mels, frames, 1)

    def from_power(self, power):
        """The fingerprints `call` gives, from the waveforms' STFT power spectrum
        `(batch, n_frames, n_fft // 2 + 1)` (`LogMelSpectrogram.from_power`; inference only)."""
        return self._embed(self.frontend.from_power(power), training=False)

    def _embed(self, mel, training):
        if self.spec_augment is not None:
            mel = self.spec_augment(mel, training=training)
        hidden = self.encoder(mel, training=training)  # (batch, D)
        return _l2_normalize(self.projection(hidden))  # (batch, d)

    def embed_all(self, waveforms):
        """f(x), L2(f(x)) and L2(g(f(x))) of a batch, without augmentation (one forward pass)."""
        hidden = ops.cast(self.encoder(self.frontend(waveforms), training=False), "float32")  # (batch, D)
        return {
            "f": hidden,
            "L2(f)": _l2_normalize(hidden),
            "g(f)": _l2_normalize(self.projection(hidden)),
        }

    def fingerprint(self, waveforms):
        """L2(g(f(x))): the fingerprint (same as `model(x)` with training off)."""
        return self(waveforms, training=False)

    @property
    def metrics(self):
        return [self.loss_tracker, self.positive_tracker, self.negative_tracker, self.accuracy_tracker]

    def _update_metrics(self, loss, labels, embeddings):
        import tensorflow as tf

        positives, not_self = pair_masks(labels)
        negatives = ops.logical_and(not_self, ops.logical_not(positives))
        sim = ops.matmul(embeddings, ops.transpose(embeddings))
        positive_f = ops.cast(positives, sim.dtype)
        negative_f = ops.cast(negatives, sim.dtype)
        self.positive_tracker.update_state(ops.sum(sim * positive_f) / ops.sum(positive_f))
        self.negative_tracker.update_state(ops.sum(sim * negative_f) / ops.sum(negative_f))
        nearest = ops.argmax(ops.where(not_self, sim, -2.0), axis=1)
        hit = ops.take_along_axis(positives, nearest[:, None], axis=1)
        self.accuracy_tracker.update_state(ops.mean(ops.cast(hit, "float32")))
        # Keras scales each replica's loss by 1 / num_replicas; report the global value.
        self.loss_tracker.update_state(loss * tf.distribute.get_strategy().num_replicas_in_sync)
        return {m.name: m.result() for m in self.metrics}

    def _gather_batch(self, data):
        """Rows, source ids and loss weights of the batch, across replicas when distributed.

        Under a `tf.distribute` strategy every replica embeds its share of the
        global batch and all-gathers the embeddings (differentiably), so each
        anchor is contrasted with the negatives of the whole global batch. A
        replica's loss weighs only its own rows (by `num_replicas`, undoing
        Keras' 1 / num_replicas loss scaling), so the summed gradients equal
        those of one device seeing the global batch.
        """
        import tensorflow as tf

        anchors, replicas = data[0], data[1]
        n_anchors, n_replicas = ops.shape(anchors)[0], ops.shape(replicas)[0]
        waveforms = ops.concatenate([anchors, replicas], axis=0)
        strategy = tf.distribute.get_strategy()
        context = tf.distribute.get_replica_context()
        if strategy.num_replicas_in_sync == 1 or context is None:
            return waveforms, source_ids(n_anchors, n_replicas), None, None
        # The global batch is split along its rows (possibly unevenly): find this
        # replica's offsets from everyone's counts.
        counts = context.all_gather(ops.stack([n_anchors, n_replicas])[None], axis=0)  # (devices, 2)
        before = ops.arange(strategy.num_replicas_in_sync) < context.replica_id_in_sync_group
        offsets = ops.sum(ops.where(before[:, None], counts, 0), axis=0)  # rows on lower replicas
        total_anchors = ops.sum(counts[:, 0])
        labels = ops.concatenate(
            [
                offsets[0] + ops.arange(n_anchors, dtype="int32"),
                ops.mod(offsets[1] + ops.arange(n_replicas, dtype="int32"), total_anchors),
            ],
            axis=0,
        )
        first_row = ops.sum(offsets)
        position = ops.arange(ops.sum(counts), dtype="int32")
        own = ops.logical_and(position >= first_row, position < first_row + n_anchors + n_replicas)
        weights = ops.cast(own, "float32") * float(strategy.num_replicas_in_sync)
        return waveforms, context.all_gather(labels, axis=0), weights, context

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is not None and len(y.shape) > 1:
            # Under a distribution strategy Keras builds the compiled loss from a data
            # batch read as (x, y) = (anchors, replicas) and y_pred = model(anchors);
            # give it the source ids such a batch of anchors would have.
            y = source_ids(ops.shape(y_pred)[0], 0)
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    def contrastive_loss(self, data, training=False):
        """Loss of a batch of (anchors, replicas) -> (loss, source ids, embeddings of the global batch)."""
        waveforms, labels, weights, context = self._gather_batch(data)
        embeddings = self(waveforms, training=training)  # (local rows, d)
        if context is not None:
            embeddings = context.all_gather(embeddings, axis=0)  # (global rows, d)
        loss = self.compute_loss(
            x=waveforms, y=labels, y_pred=embeddings, sample_weight=weights, training=training
        )
        return loss, labels, embeddings

    def train_step(self, data):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss, labels, embeddings = self.contrastive_loss(data, training=True)
        trainable = self.trainable_variables
        gradients = tape.gradient(loss, trainable)
        self.optimizer.apply(gradients, trainable)
        return self._update_metrics(loss, labels, embeddings)

    def test_step(self, data):
        loss, labels, embeddings = self.contrastive_loss(data, training=False)
        return self._update_metrics(loss, labels, embeddings)

    def batch_similarity(self, anchors, replicas):
        """Similarity matrix (n_anchors, n_replicas) of a batch's fingerprints, for logging."""
        return similarity_matrix(self.fingerprint(anchors), self.fingerprint(replicas))

    def get_config(self):
        config = _float32_config(super().get_config(), self)
        config.update(
            frontend=_serialize_float32(self.frontend),
            encoder=_serialize_float32(self.encoder),
            projection=_serialize_float32(self.projection),
            spec_augment=_serialize_float32(self.spec_augment) if self.spec_augment is not None else None,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("frontend", "encoder", "projection", "spec_augment"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
