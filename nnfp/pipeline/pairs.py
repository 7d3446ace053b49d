"""The tf.data pipeline of (anchor, replica) pairs for contrastive training.

Follows the data recipe of Chang et al., ICASSP 2021 ("Neural Audio Fingerprint for
High-specific Audio Retrieval based on Contrastive Learning"): 1 s segments at 8 kHz with a
0.5 s hop; a replica is the same segment taken at a small random time offset, mixed with
background noise at a random SNR and convolved with a room/microphone impulse response.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from nnfp.audio.segments import segment_starts
from nnfp.audio.sources import INT16_SCALE
from nnfp.pipeline.degrade import fft_convolve, mix_at_snr, next_pow2

__all__ = ["PairPipeline", "make_pair_dataset", "make_validation_pairs"]

_VALIDATION_CHUNK = 256


def _to_int16(audio):
    if audio.dtype == np.int16:  # already PCM (a prepared cache): stored as is
        return audio
    return np.clip(np.round(audio * INT16_SCALE), -32768, 32767).astype(np.int16)


def _windows(bank, starts, length):
    """Gathers `bank[s:s+length]` for every start: (n,) -> (n, length) float32."""
    grid = starts[:, None] + tf.range(length, dtype=tf.int64)[None, :]  # (n, length)
    return tf.cast(tf.gather(bank, grid), tf.float32) / INT16_SCALE


# ----------------------------------------------------------------------------- pipeline


def _check_range(name, value):
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair. Received: {name}={value}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be finite with low <= high. Received: {name}={value}")
    return low, high


def _check_bank(name, arrays):
    if arrays is None:
        return None
    if len(arrays) == 0:
        raise ValueError(
            f"{name} must be None or a non-empty list of 1-D arrays. Received: {name}=[]"
        )
    checked = []
    for i, x in enumerate(arrays):
        x = np.asarray(x)
        x = x / np.float32(INT16_SCALE) if x.dtype == np.int16 else x.astype(np.float32)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"{name}[{i}] must be a non-empty 1-D array. Received shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name}[{i}] contains NaN or Inf")
        checked.append(x)
    return checked


def _cpu_variable(array):
    # A variable, not a constant: banks can exceed the 2 GB limit of serialised graphs.
    with tf.device("/CPU:0"):
        return tf.Variable(array, trainable=False)


class PairPipeline:
    """Source of (anchor, replica) waveform pairs for contrastive fingerprint training.

    All tracks live in one int16 array with a table of segment starts, so a batch is one
    vectorised `tf.gather` plus batched augmentation. A replica of an anchor starts at a
    random offset within `offset_margin` seconds (clipped to its track), then gets, each
    with its own probability, an impulse response (batched FFT convolution with cached IR
    spectra over the replica and the `reverb_context_seconds` before it, so earlier notes'
    reverberation reaches it; energy re-normalised), background noise at a uniform random
    SNR (`snr_db_range`), speech at its own SNR (`speech_snr_db_range`; off in the paper),
    and a random gain. With `random_anchors`, an anchor starts anywhere in the hop after its
    grid position (a fresh draw every batch), so training sees every alignment. SNRs are energy ratios over the 1 s segment, as in the original
    `background_mix`; unlike it the mix is not max-normalised (the gain does that job).
    Random draws are stateless, seeded by `(seed, batch index)`: reproducible streams.
    The banks are CPU `tf.Variable`s (no 2 GB graph limit); build the pipeline outside
    any `tf.distribute` strategy scope so they are not mirrored onto accelerators.

    Args:
        tracks: list of 1-D float arrays (mono, at `sample_rate`), or int16 PCM arrays
            (`load_prepared`) stored without conversion; tracks shorter than one segment
            are skipped.
        noise: optional list of 1-D background-noise arrays.
        speech: optional list of 1-D speech arrays (a bank separate from `noise`).
        impulse_responses: optional list of 1-D impulse responses (zero-padded to the
            longest one).
        sample_rate, segment_seconds, hop_seconds: segmentation, as in the paper (8 kHz,
            1 s, 0.5 s).
        offset_margin: maximum replica time shift in seconds.
        snr_db_range: (low, high) SNR in dB of the noise mix.
        noise_prob, ir_prob: per-replica probability of each degradation.
        speech_prob: per-replica probability of the speech mix.
        speech_snr_db_range: (low, high) SNR in dB of the speech mix.
        gain_db_range: (low, high) random gain in dB applied last.
        random_anchors: draw anchor starts uniformly within the hop (not on the grid).
        reverb_context_seconds: audio before the replica that passes through the room.

    Output of `dataset(...)`: batches `(anchors, replicas)` of float32, shapes
    `(n_anchors, segment_samples)` and `(batch_size - n_anchors, segment_samples)`;
    replica j comes from anchor `j % n_anchors`.

    Example:
        pipeline = PairPipeline(tracks, noise=noise, impulse_responses=irs)
        ds = pipeline.dataset(batch_size=120, n_anchors=60, seed=0)
        anchors, replicas = next(iter(ds))  # (60, 8000), (60, 8000)
    """

    def __init__(
        self,
        tracks,
        noise=None,
        impulse_responses=None,
        sample_rate=8000,
        segment_seconds=1.0,
        hop_seconds=0.5,
        offset_margin=0.2,
        snr_db_range=(0.0, 10.0),
        noise_prob=1.0,
        ir_prob=1.0,
        gain_db_range=(0.0, 0.0),
        speech=None,
        speech_prob=1.0,
        speech_snr_db_range=(0.0, 10.0),
        random_anchors=False,
        reverb_context_seconds=0.0,
    ):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0. Received: sample_rate={sample_rate}")
        if segment_seconds <= 0:
            raise ValueError(
                f"segment_seconds must be > 0. Received: segment_seconds={segment_seconds}"
            )
        if hop_seconds <= 0:
            raise ValueError(f"hop_seconds must be > 0. Received: hop_seconds={hop_seconds}")
        if offset_margin < 0:
            raise ValueError(f"offset_margin must be >= 0. Received: offset_margin={offset_margin}")
        if reverb_context_seconds < 0:
            raise ValueError(
                f"reverb_context_seconds must be >= 0. Received: reverb_context_seconds={reverb_context_seconds}"
            )
        for name, prob in (
            ("noise_prob", noise_prob),
            ("ir_prob", ir_prob),
            ("speech_prob", speech_prob),
        ):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={prob}")
        self.sample_rate = sample_rate
        self.segment_seconds = segment_seconds
        self.hop_seconds = hop_seconds
        self.offset_margin = offset_margin
        self.snr_db_range = _check_range("snr_db_range", snr_db_range)
        self.noise_prob = float(noise_prob)
        self.ir_prob = float(ir_prob)
        self.gain_db_range = _check_range("gain_db_range", gain_db_range)
        self.speech_prob = float(speech_prob)
        self.speech_snr_db_range = _check_range("speech_snr_db_range", speech_snr_db_range)
        self.segment_samples = int(round(segment_seconds * sample_rate))
        self.hop_samples = int(round(hop_seconds * sample_rate))
        self.margin_samples = int(round(offset_margin * sample_rate))
        self.random_anchors = bool(random_anchors)
        self.reverb_context_seconds = float(reverb_context_seconds)
        self.context_samples = int(round(reverb_context_seconds * sample_rate))
        if self.segment_samples < 1 or self.hop_samples < 1:
            raise ValueError(
                "segment_seconds and hop_seconds must each span at least one sample. "
                f"Received: segment_seconds={segment_seconds}, hop_seconds={hop_seconds}"
            )

        self._build_track_bank(tracks)
        noise = _check_bank("noise", noise)
        speech = _check_bank("speech", speech)
        impulse_responses = _check_bank("impulse_responses", impulse_responses)
        self._noise = None if noise is None else self._build_clip_bank(noise)
        self._speech = None if speech is None else self._build_clip_bank(speech)
        self._ir_spectra = None
        if impulse_responses is not None:
            ir_length = max(len(ir) for ir in impulse_responses)
            padded = np.zeros((len(impulse_responses), ir_length), np.float32)
            for i, ir in enumerate(impulse_responses):
                padded[i, : len(ir)] = ir
            # Spectra computed once: a batch then needs 2 FFTs per replica instead of 3.
            self._ir_n_fft = next_pow2(self.segment_samples + self.context_samples + ir_length - 1)
            spectra = tf.signal.rfft(tf.constant(padded), [self._ir_n_fft]).numpy()
            self._ir_spectra = _cpu_variable(spectra)  # (n_ir, n_fft // 2 + 1) complex64
            self.n_impulse_responses = len(impulse_responses)
        self._sample_fn = tf.function(
            self._sample,
            input_signature=[
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([2], tf.int64),
            ],
        )

    # -- banks

    def _build_track_bank(self, tracks):
        if tracks is None or len(tracks) == 0:
            raise ValueError("tracks must be a non-empty list of 1-D arrays. Received: tracks=[]")
        seg, hop = self.segment_samples, self.hop_samples
        kept, starts, low, high = [], [], [], []
        offset = 0
        for i, track in enumerate(tracks):
            track = np.asarray(track)
            if track.ndim != 1:
                raise ValueError(f"tracks[{i}] must be 1-D (mono). Received shape {track.shape}")
            if len(track) < seg:
                continue
            if not np.isfinite(track).all():
                raise ValueError(f"tracks[{i}] contains NaN or Inf")
            track_starts = segment_starts(len(track), seg, hop)
            starts.append(offset + track_starts)
            low.append(np.full(len(track_starts), offset, np.int64))
            high.append(np.full(len(track_starts), offset + len(track) - seg, np.int64))
            kept.append(track)
            offset += len(track)
        if not kept:
            raise ValueError(
                f"No segment of {self.segment_seconds} s in any of the {len(tracks)} tracks: "
                f"every track is shorter than {seg} samples at sample_rate={self.sample_rate}"
            )
        bank = np.empty(offset, np.int16)
        position = 0
        for track in kept:
            bank[position : position + len(track)] = _to_int16(track)
            position += len(track)
        self.n_tracks = len(kept)
        self.n_segments = int(sum(len(s) for s in starts))
        self.segment_start = np.concatenate(starts)  # (n_segments,) absolute start
        # Building the variable briefly needs ~3x the int16 bank (numpy + conversion copies).
        self._audio = _cpu_variable(bank)  # (total_samples,) int16
        del bank
        self._segment_start = tf.constant(self.segment_start)
        self._segment_low = tf.constant(np.concatenate(low))  # earliest start in its track
        self._segment_high = tf.constant(np.concatenate(high))  # latest start in its track

    def _build_clip_bank(self, clips):
        """Noise or speech clips in one int16 array, for uniform excerpt draws."""
        seg = self.segment_samples
        clips = [np.resize(x, seg) if len(x) < seg else x for x in clips]  # tile short clips
        lengths = np.array([len(x) for x in clips], np.int64)
        n_starts = lengths - seg + 1  # valid excerpt starts per clip
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        cumulative = np.cumsum(n_starts)
        # A uniform draw u in [0, total starts) maps to clip i = searchsorted(cumulative, u)
        # and absolute start u + (offsets[i] - (cumulative[i] - n_starts[i])).
        return {
            "audio": _cpu_variable(np.concatenate([_to_int16(x) for x in clips])),
            "cumulative": tf.constant(cumulative),
            "shift": tf.constant(offsets - (cumulative - n_starts)),
            "total_starts": int(cumulative[-1]),
        }

    def _excerpts(self, bank, n, seed):
        """`n` uniformly drawn one-segment excerpts of a clip bank and their starts."""
        draw = tf.random.stateless_uniform([n], seed, 0, bank["total_starts"], tf.int64)
        clip = tf.searchsorted(bank["cumulative"], draw, side="right")
        start = draw + tf.gather(bank["shift"], clip)
        return _windows(bank["audio"], start, self.segment_samples), start

    # -- sampling

    def _sample(self, segment_ids, n_replicas, seed):
        """Anchors, replicas and every random draw for one batch (a dict of tensors)."""
        seg = self.segment_samples
        seeds = tf.random.experimental.stateless_split(seed, 8)  # (8, 2)
        n_anchors = tf.shape(segment_ids)[0]
        anchor_start = tf.gather(self._segment_start, segment_ids)  # (n_anchors,)
        if self.random_anchors:
            # Anywhere in the hop after the grid start (clipped to the track): over the
            # epochs the model sees every sample position, as queries in the wild do.
            jitter = tf.random.stateless_uniform(
                [n_anchors], tf.random.experimental.stateless_fold_in(seed, 8), 0, self.hop_samples, tf.int64
            )
            anchor_start = tf.minimum(anchor_start + jitter, tf.gather(self._segment_high, segment_ids))
        anchors = _windows(self._audio, anchor_start, seg)  # (n_anchors, seg)

        source = tf.range(n_replicas) % n_anchors  # (n_replicas,) tiled anchor order
        source_ids = tf.gather(segment_ids, source)
        shift = tf.random.stateless_uniform(
            [n_replicas], seeds[0], -self.margin_samples, self.margin_samples + 1, tf.int64
        )
        replica_start = tf.clip_by_value(
            tf.gather(anchor_start, source) + shift,
            tf.gather(self._segment_low, source_ids),
            tf.gather(self._segment_high, source_ids),
        )
        clean = _windows(self._audio, replica_start, seg)  # (n_replicas, seg)
        out = {
            "anchors": anchors,
            "clean_replicas": clean,
            "replica_start": replica_start,
            "offset": replica_start - tf.gather(anchor_start, source),
        }
        replicas = clean

        if self._ir_spectra is not None:
            # The room comes first (it colours the music, not the noise at the phone), and
            # it hears `context_samples` of audio before the replica, so reverberation tails
            # of earlier notes reach it as they do in a real room.
            n_ir = self.n_impulse_responses
            ir_index = tf.random.stateless_uniform([n_replicas], seeds[4], 0, n_ir, tf.int32)
            ir_on = tf.random.stateless_uniform([n_replicas], seeds[5]) < self.ir_prob
            context = self.context_samples
            dry = clean
            if context:
                low = tf.gather(self._segment_low, source_ids)
                grid = (replica_start - context)[:, None] + tf.range(seg + context, dtype=tf.int64)[None, :]
                inside = tf.cast(grid >= low[:, None], tf.float32)  # nothing before the track
                dry = tf.cast(tf.gather(self._audio, tf.maximum(grid, 0)), tf.float32) / INT16_SCALE * inside
            reverberant = fft_convolve(
                dry, ir_spectra=tf.gather(self._ir_spectra, ir_index), n_fft=self._ir_n_fft
            )[:, context:]  # (n_replicas, seg)
            dry_power = tf.reduce_mean(tf.square(clean), axis=-1, keepdims=True)
            wet_power = tf.reduce_mean(tf.square(reverberant), axis=-1, keepdims=True)
            reverberant = reverberant * tf.sqrt(tf.math.divide_no_nan(dry_power, wet_power))
            replicas = tf.where(ir_on[:, None], reverberant, replicas)
            out.update(ir_index=ir_index, ir_on=ir_on)

        if self._noise is not None:
            snr_db = tf.random.stateless_uniform([n_replicas], seeds[1], *self.snr_db_range)
            noise, noise_start = self._excerpts(self._noise, n_replicas, seeds[2])
            noise_on = tf.random.stateless_uniform([n_replicas], seeds[3]) < self.noise_prob
            noisy = mix_at_snr(replicas, noise, snr_db)
            replicas = tf.where(noise_on[:, None], noisy, replicas)
            out.update(snr_db=snr_db, noise_start=noise_start, noise_on=noise_on)

        if self._speech is not None and self.speech_prob > 0:
            speech_seeds = tf.random.experimental.stateless_split(seeds[7], 3)  # (3, 2)
            speech_snr_db = tf.random.stateless_uniform(
                [n_replicas], speech_seeds[0], *self.speech_snr_db_range
            )
            speech, speech_start = self._excerpts(self._speech, n_replicas, speech_seeds[1])
            speech_on = tf.random.stateless_uniform([n_replicas], speech_seeds[2]) < self.speech_prob
            mixed = mix_at_snr(replicas, speech, speech_snr_db)
            replicas = tf.where(speech_on[:, None], mixed, replicas)
            out.update(speech_snr_db=speech_snr_db, speech_start=speech_start, speech_on=speech_on)

        if self.gain_db_range != (0.0, 0.0):
            gain_db = tf.random.stateless_uniform([n_replicas], seeds[6], *self.gain_db_range)
            replicas = replicas * tf.pow(10.0, gain_db / 20.0)[:, None]
            out.update(gain_db=gain_db)

        out["replicas"] = tf.ensure_shape(replicas, [None, seg])
        out["anchors"] = tf.ensure_shape(anchors, [None, seg])
        return out

    def sample(self, segment_ids, n_replicas=None, seed=(0, 0)):
        """One batch for explicit segment ids, with all random draws (for tests/inspection).

        Returns a dict of numpy arrays: `anchors`, `replicas`, `clean_replicas` (shifted but
        not degraded), `replica_start`, `offset`, and when enabled `snr_db`, `noise_start`,
        `noise_on`, `speech_snr_db`, `speech_start`, `speech_on`, `ir_index`, `ir_on`,
        `gain_db`.
        """
        segment_ids = tf.constant(np.asarray(segment_ids, np.int64).reshape(-1))
        n_replicas = int(segment_ids.shape[0] if n_replicas is None else n_replicas)
        out = self._sample_fn(
            segment_ids, tf.constant(n_replicas, tf.int32), tf.constant(seed, tf.int64)
        )
        return {k: v.numpy() for k, v in out.items()}

    def dataset(self, batch_size, n_anchors, shuffle=True, seed=0, repeat=True):
        """`tf.data.Dataset` of `(anchors, replicas)` batches (see the class docstring).

        The stream is reproducible for a fixed `seed`. With `repeat=False`, re-iterating
        reshuffles the segments but reuses the per-batch-position augmentation seeds.
        """
        if not isinstance(n_anchors, int | np.integer) or n_anchors < 1:
            raise ValueError(f"n_anchors must be an integer >= 1. Received: n_anchors={n_anchors}")
        if not isinstance(batch_size, int | np.integer) or batch_size < 2 * n_anchors:
            raise ValueError(
                "batch_size must be an integer >= 2 * n_anchors so every anchor has a replica. "
                f"Received: batch_size={batch_size}, n_anchors={n_anchors}"
            )
        if n_anchors > self.n_segments:
            raise ValueError(
                f"n_anchors={n_anchors} exceeds the {self.n_segments} segments available: "
                "no full batch can be formed"
            )
        n_replicas = int(batch_size - n_anchors)
        seed = int(seed)
        ds = tf.data.Dataset.range(self.n_segments)
        if shuffle:
            ds = ds.shuffle(self.n_segments, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(int(n_anchors), drop_remainder=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.enumerate()

        def build(batch_index, segment_ids):
            out = self._sample(
                segment_ids, n_replicas, tf.stack([tf.constant(seed, tf.int64), batch_index])
            )
            return out["anchors"], out["replicas"]

        ds = ds.map(build, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)


def make_pair_dataset(
    tracks,
    batch_size,
    n_anchors,
    noise=None,
    impulse_responses=None,
    sample_rate=8000,
    segment_seconds=1.0,
    hop_seconds=0.5,
    offset_margin=0.2,
    snr_db_range=(0.0, 10.0),
    noise_prob=1.0,
    ir_prob=1.0,
    gain_db_range=(0.0, 0.0),
    speech=None,
    speech_prob=1.0,
    speech_snr_db_range=(0.0, 10.0),
    random_anchors=False,
    reverb_context_seconds=0.0,
    shuffle=True,
    seed=0,
    repeat=True,
):
    """`tf.data.Dataset` of `(anchors, replicas)` training batches; see `PairPipeline`."""
    pipeline = PairPipeline(
        tracks,
        noise=noise,
        impulse_responses=impulse_responses,
        sample_rate=sample_rate,
        segment_seconds=segment_seconds,
        hop_seconds=hop_seconds,
        offset_margin=offset_margin,
        snr_db_range=snr_db_range,
        noise_prob=noise_prob,
        ir_prob=ir_prob,
        gain_db_range=gain_db_range,
        speech=speech,
        speech_prob=speech_prob,
        speech_snr_db_range=speech_snr_db_range,
        random_anchors=random_anchors,
        reverb_context_seconds=reverb_context_seconds,
    )
    return pipeline.dataset(batch_size, n_anchors, shuffle=shuffle, seed=seed, repeat=repeat)


def make_validation_pairs(
    tracks,
    n_segments_max=None,
    noise=None,
    impulse_responses=None,
    sample_rate=8000,
    segment_seconds=1.0,
    hop_seconds=0.5,
    offset_margin=0.2,
    snr_db_range=(0.0, 10.0),
    seed=1234,
    speech=None,
    speech_prob=1.0,
    speech_snr_db_range=(0.0, 10.0),
    reverb_context_seconds=0.0,
):
    """Deterministic `(originals, replicas)`, each `(N, segment_samples)` float32.

    Rows follow track order then time order (consecutive segments of a track are
    consecutive rows), keeping the first `n_segments_max` segments when given. Replicas
    use the training augmentation with noise and impulse responses always applied and
    speech with probability `speech_prob`. The same `seed` gives the same pairs in every
    run, so validation numbers are comparable run to run.
    """
    pipeline = PairPipeline(
        tracks,
        noise=noise,
        impulse_responses=impulse_responses,
        sample_rate=sample_rate,
        segment_seconds=segment_seconds,
        hop_seconds=hop_seconds,
        offset_margin=offset_margin,
        snr_db_range=snr_db_range,
        speech=speech,
        speech_prob=speech_prob,
        speech_snr_db_range=speech_snr_db_range,
        reverb_context_seconds=reverb_context_seconds,
    )
    n = pipeline.n_segments
    if n_segments_max is not None:
        if n_segments_max < 1:
            raise ValueError(
                f"n_segments_max must be >= 1 or None. Received: n_segments_max={n_segments_max}"
            )
        n = min(n, int(n_segments_max))
    originals, replicas = [], []
    for chunk, first in enumerate(range(0, n, _VALIDATION_CHUNK)):
        ids = np.arange(first, min(first + _VALIDATION_CHUNK, n))
        out = pipeline.sample(ids, seed=(int(seed), chunk))
        originals.append(out["anchors"])
        replicas.append(out["replicas"])
    return np.concatenate(originals), np.concatenate(replicas)
