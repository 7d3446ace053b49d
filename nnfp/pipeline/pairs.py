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
from nnfp.pipeline.augment import (
    BackgroundMix,
    RandomGain,
    RandomPitchShift,
    RandomSpeed,
    RandomTimeShift,
    RandomTimeStretch,
    RoomImpulseResponse,
)
from nnfp.pipeline.bank import check_clips, cpu_variable, gather_windows, to_int16
from nnfp.pipeline.field import RandomBandLimit, RandomClipping, RandomCodec, RandomGainControl

__all__ = ["PairPipeline", "make_pair_dataset", "make_validation_pairs"]

_VALIDATION_CHUNK = 256


class PairPipeline:
    """Source of (anchor, replica) waveform pairs for contrastive fingerprint training.

    All tracks live in one int16 array with a table of segment starts, so a batch is one
    vectorised `tf.gather` plus batched augmentation by the layers of
    `nnfp.pipeline.augment`, each with its own probability: a replica of an anchor starts at
    a random offset within `offset_margin` seconds (`RandomTimeShift`, clipped to its
    track), may play at another speed (`RandomSpeed`, `speed_range`), tempo
    (`RandomTimeStretch`, `tempo_range`) or key (`RandomPitchShift`, `pitch_semitones_range`;
    all three off by default; each changes the replica's window about its centre, read with
    enough audio on both sides that silence comes in only past the ends of its track), goes
    through a room (`RoomImpulseResponse`, over the replica and the
    `reverb_context_seconds` before it, so earlier notes' reverberation reaches it), gets
    background noise at a uniform random SNR (`BackgroundMix`, `snr_db_range`), speech at
    its own SNR (a second `BackgroundMix`, `speech_snr_db_range`; off in the paper), then
    what a phone does to it (`nnfp.pipeline.field`, all four off by default): its
    microphone's band and colour (`RandomBandLimit`, `band_limit_prob`), an overdriven
    input (`RandomClipping`, `clipping_prob`), its automatic gain control
    (`RandomGainControl`, `agc_prob`) and a speech codec (`RandomCodec`, `codec_prob`, run
    in Python on the CPU), and last a random gain (`RandomGain`). The layers are attributes
    (`time_shift`, `speed`, `tempo`, `pitch`, `room`, `noise`, `speech`, `band_limit`,
    `clipping`, `gain_control`, `codec`, `gain`). With `random_anchors`, an anchor starts
    anywhere in the hop after its grid position (a fresh draw every batch), so training sees
    every alignment. SNRs are energy ratios over the 1 s segment, as in the original
    `background_mix`; unlike it the mix is not max-normalised (the gain does that job). Random draws are stateless, seeded
    by `(seed, batch index)`: reproducible streams. The banks are CPU `tf.Variable`s (no
    2 GB graph limit); build the pipeline outside any `tf.distribute` strategy scope so they
    are not mirrored onto accelerators.

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
        speed_range: (low, high) playback-speed factor (pitch and tempo together; 1.05 is
            5 % fast); (1, 1) for none.
        speed_prob: per-replica probability of the speed change.
        tempo_range: (low, high) tempo factor (pitch kept); (1, 1) for none.
        tempo_prob: per-replica probability of the tempo change.
        pitch_semitones_range: (low, high) key shift in semitones (timing kept); (0, 0) for
            none.
        pitch_prob: per-replica probability of the key shift.
        band_limit_prob: per-replica probability of a microphone's band and colour.
        highpass_hz_range, lowpass_hz_range: (low, high) cutoffs in Hz of its high-pass and
            low-pass filters.
        shelf_db_range, peak_db_range: (low, high) gains in dB of its high shelf and its
            resonance.
        clipping_prob: per-replica probability of clipping.
        clip_db_range: (low, high) clipping level in dB relative to the replica's peak, <= 0.
        agc_prob: per-replica probability of an automatic gain control.
        agc_target_dbfs_range: (low, high) RMS level in dB re full scale it aims at.
        codec_prob: per-replica probability of a speech codec round trip.
        codecs: the codecs drawn from ("amr_nb", "opus").
        amr_nb_kbps_range, opus_kbps_range: (low, high) bit rates in kbit/s.

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
        speed_range=(1.0, 1.0),
        speed_prob=1.0,
        tempo_range=(1.0, 1.0),
        tempo_prob=1.0,
        pitch_semitones_range=(0.0, 0.0),
        pitch_prob=1.0,
        band_limit_prob=0.0,
        highpass_hz_range=(100.0, 400.0),
        lowpass_hz_range=(2800.0, 3800.0),
        shelf_db_range=(-3.0, 3.0),
        peak_db_range=(-6.0, 6.0),
        clipping_prob=0.0,
        clip_db_range=(-12.0, -1.0),
        agc_prob=0.0,
        agc_target_dbfs_range=(-26.0, -16.0),
        codec_prob=0.0,
        codecs=("amr_nb", "opus"),
        amr_nb_kbps_range=(4.75, 12.2),
        opus_kbps_range=(8.0, 16.0),
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
        self.noise_prob = float(noise_prob)
        self.ir_prob = float(ir_prob)
        self.speech_prob = float(speech_prob)
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

        # The degradations, in the order a replica gets them (nnfp.pipeline.augment); built
        # first, so bad arguments fail before any audio is copied. Their draws come from the
        # stateless seeds of `_sample`: the layers' own seeds are unused (fixed, so building
        # a pipeline leaves Python's global random state alone).
        seg = self.segment_samples
        self.time_shift = RandomTimeShift(self.margin_samples, seed=0, name="time_shift")
        self.room = RoomImpulseResponse(
            segment_samples=seg,
            context_samples=self.context_samples,
            probability=ir_prob,
            seed=0,
            name="room",
        )
        self.noise = BackgroundMix(
            segment_samples=seg,
            snr_db_range=snr_db_range,
            probability=noise_prob,
            seed=0,
            name="noise",
        )
        try:
            self.speech = BackgroundMix(
                segment_samples=seg,
                snr_db_range=speech_snr_db_range,
                probability=speech_prob,
                seed=0,
                name="speech",
            )
        except ValueError as exc:
            exc.add_note(f"(PairPipeline's speech mix: speech_snr_db_range={speech_snr_db_range})")
            raise
        self.gain = RandomGain(gain_db_range, seed=0, name="gain")
        try:
            self.speed = RandomSpeed(speed_range, probability=speed_prob, seed=0, name="speed")
            self.tempo = RandomTimeStretch(tempo_range, tempo_prob, seed=0, name="tempo")
            self.pitch = RandomPitchShift(pitch_semitones_range, pitch_prob, seed=0, name="pitch")
        except ValueError as exc:
            exc.add_note(
                f"(PairPipeline's speed, tempo and key changes: speed_range={speed_range}, "
                f"speed_prob={speed_prob}, tempo_range={tempo_range}, tempo_prob={tempo_prob}, "
                f"pitch_semitones_range={pitch_semitones_range}, pitch_prob={pitch_prob})"
            )
            raise
        try:
            self.band_limit = RandomBandLimit(
                sample_rate,
                highpass_hz_range,
                lowpass_hz_range,
                shelf_db_range=shelf_db_range,
                peak_db_range=peak_db_range,
                probability=band_limit_prob,
                seed=0,
                name="band_limit",
            )
            self.clipping = RandomClipping(
                clip_db_range, probability=clipping_prob, seed=0, name="clipping"
            )
            self.gain_control = RandomGainControl(
                sample_rate,
                agc_target_dbfs_range,
                probability=agc_prob,
                seed=0,
                name="gain_control",
            )
            self.codec = RandomCodec(
                sample_rate,
                codecs,
                amr_nb_kbps_range,
                opus_kbps_range,
                probability=codec_prob,
                seed=0,
                name="codec",
            )
        except ValueError as exc:
            exc.add_note(
                f"(PairPipeline's phone: band_limit_prob={band_limit_prob}, "
                f"highpass_hz_range={highpass_hz_range}, lowpass_hz_range={lowpass_hz_range}, "
                f"shelf_db_range={shelf_db_range}, peak_db_range={peak_db_range}, "
                f"clipping_prob={clipping_prob}, clip_db_range={clip_db_range}, agc_prob={agc_prob}, "
                f"agc_target_dbfs_range={agc_target_dbfs_range}, codec_prob={codec_prob}, "
                f"codecs={codecs}, amr_nb_kbps_range={amr_nb_kbps_range}, "
                f"opus_kbps_range={opus_kbps_range})"
            )
            raise
        # The phone's degradations in use, in this order, with the slot of their stateless seeds.
        phone = (
            (self.band_limit, 12),
            (self.clipping, 13),
            (self.gain_control, 14),
            (self.codec, 15),
        )
        self._phone = [(layer, slot) for layer, slot in phone if layer.probability > 0]
        # The speed, tempo and key changes in use, in this order: (layer, the names of its
        # draws in `sample`, the slot of its stateless seeds), and the most they speed up.
        speed, tempo, pitch = self.speed, self.tempo, self.pitch
        speed_up, tempo_up = speed.speed_range[1], tempo.tempo_range[1]
        changes = (
            (speed, speed.speed_range != (1.0, 1.0), ("speed", "speed_on"), 9, speed_up),
            (tempo, tempo.tempo_range != (1.0, 1.0), ("tempo", "tempo_on"), 10, tempo_up),
            (pitch, pitch.semitones_range != (0.0, 0.0), ("pitch_semitones", "pitch_on"), 11, 1.0),
        )
        used = [change for change in changes if change[1] and change[0].probability > 0]
        self._timescale = [(layer, keys, slot) for layer, _, keys, slot, _ in used]
        self._fastest = math.prod(fastest for *_, fastest in used)
        self.snr_db_range = self.noise.snr_db_range
        self.speech_snr_db_range = self.speech.snr_db_range
        self.gain_db_range = self.gain.gain_db_range

        self._build_track_bank(tracks)
        # Checked here, so a bad clip is reported under the pipeline's argument name.
        if impulse_responses is not None:
            self.room.set_impulse_responses(check_clips("impulse_responses", impulse_responses))
        if noise is not None:
            self.noise.set_clips(check_clips("noise", noise))
        if speech is not None:
            self.speech.set_clips(check_clips("speech", speech))
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
            bank[position : position + len(track)] = to_int16(track)
            position += len(track)
        self.n_tracks = len(kept)
        self.n_segments = int(sum(len(s) for s in starts))
        self.segment_start = np.concatenate(starts)  # (n_segments,) absolute start
        # Building the variable briefly needs ~3x the int16 bank (numpy + conversion copies).
        self._audio = cpu_variable(bank)  # (total_samples,) int16
        del bank
        self._segment_start = tf.constant(self.segment_start)
        self._segment_low = tf.constant(np.concatenate(low))  # earliest start in its track
        self._segment_high = tf.constant(np.concatenate(high))  # latest start in its track

    # -- sampling

    def _timescale_margin(self, window):
        """Samples read on each side of a replica's `window` for its speed, tempo and key
        changes: as far as the fastest change reads past the window, plus one STFT frame."""
        if not self._timescale:
            return 0
        frame = max(self.tempo.n_fft, self.pitch.n_fft)
        return math.ceil(max(0.0, self._fastest - 1.0) * window / 2) + frame

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
        anchors = gather_windows(self._audio, anchor_start, seg)  # (n_anchors, seg)

        source = tf.range(n_replicas) % n_anchors  # (n_replicas,) tiled anchor order
        source_ids = tf.gather(segment_ids, source)
        origin = tf.gather(anchor_start, source)  # (n_replicas,) where each replica's anchor starts
        low = tf.gather(self._segment_low, source_ids)
        high = tf.gather(self._segment_high, source_ids)
        drawn = self.time_shift.get_random_transformation(origin, seed=seeds[0:1])  # per replica
        replica_start = tf.clip_by_value(origin + drawn["shift"], low, high)
        # RandomTimeShift's crop, read straight from the bank (the track is the window, and no
        # window is copied): each replica and the room's context before it, with the margin
        # of the speed, tempo and key changes on both sides, silent beyond its track.
        context = self.context_samples if self.room.n_impulse_responses else 0
        margin = self._timescale_margin(context + seg)
        if context or margin:
            shifted = gather_windows(
                self._audio,
                replica_start - context - margin,
                margin + context + seg + margin,
                floor=low,
                ceiling=high + seg,
            )  # (n_replicas, margin + context + seg + margin)
        else:
            shifted = gather_windows(self._audio, replica_start, seg)  # (n_replicas, seg)
        clean = shifted[:, margin + context : margin + context + seg]  # (n_replicas, seg)
        out = {
            "anchors": anchors,
            "clean_replicas": clean,
            "replica_start": replica_start,
            "offset": replica_start - origin,
        }
        for layer, keys, slot in self._timescale:
            layer_seeds = tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(seed, slot), len(layer.draw_names)
            )
            drawn = layer.get_random_transformation(shifted, seed=layer_seeds)
            shifted = layer.transform(shifted, drawn)
            out.update(zip(keys, (drawn[name] for name in layer.draw_names), strict=True))
        shifted = shifted[:, margin : margin + context + seg]  # (n_replicas, context + seg)
        replicas = shifted[:, context:]
        # The room comes first: it colours the music, not the noise at the phone.
        if self.room.n_impulse_responses:
            drawn = self.room.get_random_transformation(shifted, seed=tf.gather(seeds, [4, 5]))
            replicas = self.room.transform(shifted, drawn)
            out.update(ir_index=drawn["index"], ir_on=drawn["on"])
        if self.noise.n_clips:
            drawn = self.noise.get_random_transformation(replicas, seed=seeds[1:4])
            replicas = self.noise.transform(replicas, drawn)
            out.update(snr_db=drawn["snr_db"], noise_start=drawn["start"], noise_on=drawn["on"])
        if self.speech.n_clips and self.speech_prob > 0:
            speech_seeds = tf.random.experimental.stateless_split(seeds[7], 3)  # (3, 2)
            drawn = self.speech.get_random_transformation(replicas, seed=speech_seeds)
            replicas = self.speech.transform(replicas, drawn)
            out.update(
                speech_snr_db=drawn["snr_db"], speech_start=drawn["start"], speech_on=drawn["on"]
            )
        for layer, slot in self._phone:
            layer_seeds = tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(seed, slot), len(layer.draw_names)
            )
            drawn = layer.get_random_transformation(replicas, seed=layer_seeds)
            replicas = layer.transform(replicas, drawn)
            out.update({f"{layer.name}_{name}": value for name, value in drawn.items()})
        if self.gain_db_range != (0.0, 0.0):
            drawn = self.gain.get_random_transformation(replicas, seed=seeds[6:7])
            replicas = self.gain.transform(replicas, drawn)
            out.update(gain_db=drawn["gain_db"])

        out["replicas"] = tf.ensure_shape(replicas, [None, seg])
        out["anchors"] = tf.ensure_shape(anchors, [None, seg])
        return out

    def sample(self, segment_ids, n_replicas=None, seed=(0, 0)):
        """One batch for explicit segment ids, with all random draws (for tests/inspection).

        Returns a dict of numpy arrays: `anchors`, `replicas`, `clean_replicas` (shifted but
        not degraded), `replica_start`, `offset`, and when enabled `speed`, `speed_on`,
        `tempo`, `tempo_on`, `pitch_semitones`, `pitch_on`, `snr_db`, `noise_start`,
        `noise_on`, `speech_snr_db`, `speech_start`, `speech_on`, `ir_index`, `ir_on`,
        `gain_db`, and the draws of the phone's layers under their names
        (`band_limit_highpass_hz`, ..., `band_limit_on`, `clipping_clip_db`, `clipping_soft`,
        `clipping_on`, `gain_control_target_dbfs`, ..., `codec_codec`, `codec_kbps`,
        `codec_on`).
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


def make_pair_dataset(tracks, batch_size, n_anchors, *, shuffle=True, seed=0, repeat=True, **options):
    """`tf.data.Dataset` of `(anchors, replicas)` training batches: `PairPipeline(tracks,
    **options).dataset(...)`; `options` are `PairPipeline`'s keyword arguments, with its defaults."""
    pipeline = PairPipeline(tracks, **options)
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
