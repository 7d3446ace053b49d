"""Fingerprints without TensorFlow: a LiteRT model and its spec, run by `ai-edge-litert`.

A LiteRT model is a folder (what `nnfp export MODEL OUT --format litert` writes, and
`litert/` inside every index built from a Keras model): `model.tflite`, whose `serve`
signature maps `waveforms` (batch, segment_samples) float32 to `fingerprint` (batch, d),
mel front end included, and `spec.json`, the model's contract (sample rate, segment and
hop samples, embedding size, the digest of the Keras model it was converted from).

Folders exported since spec version 2 also hold `spectrum.tflite`: the same model from the
STFT power spectrum on (`power` (batch, n_frames, n_fft // 2 + 1) to `fingerprint`), with
the STFT's settings in the spec (`"spectrum"`). `LiteFingerprinter` then computes the STFT
itself (`power_spectrum`, NumPy's FFT), faster than the interpreter's own FFT kernel, which
runs on one thread whatever `num_threads`; the fingerprints are the same to float rounding
(the export measures both paths against Keras). `model.tflite` alone is
what a phone or any other LiteRT runtime needs.

This module needs only NumPy and `ai-edge-litert` (and, for `fingerprint_file`,
soundfile and soxr through `nnfp.audio.io`): the on-device half of a phone/server split,
or a light worker, fingerprints audio with it and sends the array to a catalogue.

>>> model = LiteFingerprinter("exported/lite")
>>> fingerprints = fingerprint_file("clip.m4a", model)  # (n_segments, 128), on the model's hop
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

__all__ = [
    "LITERT_MODEL_FILE",
    "LITERT_SPECTRUM_FILE",
    "LITERT_SPEC_FILE",
    "LITERT_SPEC_VERSION",
    "LiteFingerprinter",
    "LiteRTUnavailableError",
    "fingerprint_file",
    "hann_window",
    "is_litert_model",
    "litert_available",
    "power_spectrum",
    "read_spec",
    "spectrum_settings",
    "usable_cores",
]

LITERT_MODEL_FILE = "model.tflite"
LITERT_SPECTRUM_FILE = "spectrum.tflite"
LITERT_SPEC_FILE = "spec.json"
SPEC_FORMAT = "nnfp-litert"
LITERT_SPEC_VERSION = 2  # 2: spectrum.tflite and the spec's "spectrum" (STFT settings, parity)
SIGNATURE = "serve"
SPECTRUM_SIGNATURE = "spectrum"  # of spectrum.tflite: `power` -> `fingerprint`
_STFT_KEYS = ("n_fft", "hop_length", "pad", "n_frames")
# Rows per interpreter call: small calls ran fastest with XNNPACK (docs/defaults.md).
CALL_ROWS = 16


class LiteRTUnavailableError(ImportError):
    """`ai-edge-litert` is not installed."""


def litert_available():
    """True when the LiteRT runtime (`ai-edge-litert`) can be imported."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def is_litert_model(path):
    """True for a LiteRT model folder (`model.tflite` + `spec.json`)."""
    path = Path(path)
    return path.is_dir() and (path / LITERT_MODEL_FILE).is_file() and (path / LITERT_SPEC_FILE).is_file()


def read_spec(path):
    """The `spec.json` of a LiteRT model folder, checked.

    Raises:
        ValueError: a missing, unreadable or incomplete spec (the message names the file).
    """
    spec_path = Path(path) / LITERT_SPEC_FILE
    try:
        spec = json.loads(spec_path.read_text())
        if spec.get("format") != SPEC_FORMAT:
            raise ValueError(f"format {spec.get('format')!r}, expected {SPEC_FORMAT!r}")
        for key in ("sample_rate", "segment_samples", "embedding_dim"):
            if not isinstance(spec.get(key), int) or spec[key] <= 0:
                raise ValueError(f"`{key}` must be a positive integer, found {spec.get(key)!r}")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(
            f"{spec_path}: not an nnfp LiteRT model spec ({type(error).__name__}: {error}); "
            "export the model again with `nnfp export MODEL OUT --format litert`"
        ) from None
    return spec


def spectrum_settings(spec, path=None):
    """The STFT settings of a spec's `spectrum.tflite` (`"spectrum"`), checked, or None when
    the folder has none (a spec version 1 export: only `model.tflite`).

    Raises:
        ValueError: settings that are not positive integers or do not give the spec's segment
            `n_frames` frames (the message names `spec.json`).
    """
    settings = spec.get("spectrum")
    if settings is None:
        return None
    where = Path(path) / LITERT_SPEC_FILE if path is not None else LITERT_SPEC_FILE
    try:
        if not isinstance(settings, dict) or not all(isinstance(settings.get(k), int) for k in _STFT_KEYS):
            raise ValueError(f"`spectrum` must hold the integers {', '.join(_STFT_KEYS)}, found {settings!r}")
        if settings["n_fft"] < 2 or settings["hop_length"] < 1 or settings["pad"] < 0:
            raise ValueError(f"`spectrum` holds an impossible STFT: {settings!r}")
        padded = int(spec["segment_samples"]) + 2 * settings["pad"]
        if padded < settings["n_fft"] or 1 + (padded - settings["n_fft"]) // settings["hop_length"] != settings["n_frames"]:
            raise ValueError(f"`spectrum` gives another number of frames than its n_frames: {settings!r}")
        if settings.get("window", "hann") != "hann":
            raise ValueError(f"`spectrum` window {settings.get('window')!r}, expected 'hann'")
    except ValueError as error:
        raise ValueError(
            f"{where}: not an nnfp LiteRT model spec ({error}); export the model again with "
            "`nnfp export MODEL OUT --format litert`"
        ) from None
    return settings


def power_spectrum(waveforms, n_fft, hop_length, pad, n_frames):
    """The STFT power spectrum `LogMelSpectrogram` computes inside the model, in NumPy:
    `(batch, samples)` float32 waveforms, zero-padded by `pad` on both sides, cut into
    `n_frames` frames of `n_fft` samples `hop_length` apart, each times a periodic Hann window
    -> `(batch, n_frames, n_fft // 2 + 1)` float32 `|rfft|^2`."""
    waveforms = np.asarray(waveforms, np.float32)
    stft = _PowerSpectrum(len(waveforms), waveforms.shape[1], n_fft, hop_length, pad, n_frames)
    return stft(waveforms).copy()


class _PowerSpectrum:
    """`power_spectrum` of `rows` waveforms at a time into buffers of its own, made once: fresh
    arrays of a few MB per call cost more than the FFT (the allocator maps them anew). One
    call at a time, as an interpreter; the result is overwritten by the next call."""

    _CHUNK_ROWS = 4  # rows transformed at once (keeps the FFT's own output small)

    def __init__(self, rows, samples, n_fft, hop_length, pad, n_frames):
        self.pad = int(pad)
        self._padded = np.zeros((rows, samples + 2 * self.pad), np.float32)  # the pads stay zero
        view = np.lib.stride_tricks.sliding_window_view(self._padded, n_fft, axis=1)
        self._frames_of_padded = view[:, ::hop_length][:, :n_frames]
        self._frames = np.empty((rows, n_frames, n_fft), np.float32)
        self._power = np.empty((rows, n_frames, n_fft // 2 + 1), np.float32)
        self._window = hann_window(n_fft)

    def __call__(self, waveforms):
        self._padded[:, self.pad : self._padded.shape[1] - self.pad] = waveforms
        np.multiply(self._frames_of_padded, self._window, out=self._frames)
        for first in range(0, len(self._frames), self._CHUNK_ROWS):
            rows = slice(first, first + self._CHUNK_ROWS)
            spectrum = np.fft.rfft(self._frames[rows], axis=-1)  # complex64 from float32 (NumPy >= 2)
            np.square(spectrum.real, out=self._power[rows])
            self._power[rows] += np.square(spectrum.imag)
        return self._power


def hann_window(n_fft):
    """The periodic Hann window of `n_fft` samples (`LogMelSpectrogram.window`), float32."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Silences file descriptor 2 for a moment: the runtime's C++ code prints `INFO: Created
    TensorFlow Lite XNNPACK delegate for CPU.` when its first call plans the graph, which a
    command's user cannot tell from a fault. Python's own `sys.stderr` is flushed first."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (an embedded interpreter)
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def usable_cores():
    """The cores this process may use (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class LiteFingerprinter:
    """A fingerprinter run by the LiteRT interpreter (XNNPACK on CPU), no TensorFlow.

    The same interface as the TensorFlow fingerprinters of `nnfp.runtime`: `.fingerprint`,
    `.segment_samples`, `.embedding_dim`, plus `.sample_rate` and `.spec`.

    Args:
        path: a LiteRT model folder (`model.tflite` + `spec.json`, and `spectrum.tflite` in
            exports since spec version 2).
        num_threads: XNNPACK threads; default: the cores this process may use.
        spectrum: with a `spectrum.tflite`, compute the STFT in NumPy and run the model from
            the power spectrum on (default; `front_end` says which path runs); False: always
            `model.tflite` on the waveforms.

    Example:

    >>> model = LiteFingerprinter("my_index/litert")
    >>> model.fingerprint(np.zeros((4, model.segment_samples), np.float32)).shape
    (4, 128)
    """

    runtime = "litert"

    def __init__(self, path, num_threads=None, spectrum=True):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise LiteRTUnavailableError(
                "the LiteRT runtime is not installed: pip install ai-edge-litert "
                "(or use the TensorFlow runtime, `--runtime tensorflow`)"
            ) from error
        self.path = Path(path)
        self.spec = read_spec(self.path)
        self.sample_rate = int(self.spec["sample_rate"])
        self.segment_samples = int(self.spec["segment_samples"])
        self.embedding_dim = int(self.spec["embedding_dim"])
        self.num_threads = usable_cores() if num_threads is None else int(num_threads)
        self._stft = spectrum_settings(self.spec, self.path) if spectrum else None
        if self._stft is not None and not (self.path / LITERT_SPECTRUM_FILE).is_file():
            raise ValueError(
                f"{self.path}: {LITERT_SPEC_FILE} names {LITERT_SPECTRUM_FILE}, which is missing; "
                "export the model again with `nnfp export MODEL OUT --format litert`"
            )
        # "numpy": the STFT in NumPy, then spectrum.tflite; "litert": model.tflite on the waveforms
        self.front_end = "litert" if self._stft is None else "numpy"
        if self._stft is not None:
            self._power_spectrum = _PowerSpectrum(CALL_ROWS, self.segment_samples, *(self._stft[k] for k in _STFT_KEYS))
        model_path = self.path / (LITERT_MODEL_FILE if self._stft is None else LITERT_SPECTRUM_FILE)
        self._planned = False
        try:
            self._interpreter = Interpreter(model_path=str(model_path), num_threads=self.num_threads)
            self._run = self._interpreter.get_signature_runner(SIGNATURE if self._stft is None else SPECTRUM_SIGNATURE)
        except Exception as error:  # ValueError/RuntimeError of a damaged flatbuffer
            raise ValueError(
                f"{model_path}: cannot load the LiteRT model ({type(error).__name__}: {error}); "
                "export it again with `nnfp export MODEL OUT --format litert`"
            ) from None

    def fingerprint(self, waveforms, batch_size=256):
        """(n, segment_samples) float32 waveforms -> (n, d) float32 L2-normalised fingerprints.

        Every call holds `CALL_ROWS` rows (the last one zero-padded), so the interpreter keeps
        one input size (resizing re-plans the graph); `batch_size` is accepted for the
        interface of the TensorFlow fingerprinters.
        """
        waveforms = np.asarray(waveforms, np.float32)
        if waveforms.ndim != 2 or waveforms.shape[1] != self.segment_samples:
            raise ValueError(
                f"`waveforms` must have shape (n, {self.segment_samples}). Received: shape={waveforms.shape}"
            )
        rows = CALL_ROWS
        out = []
        for first in range(0, len(waveforms), rows):
            batch = waveforms[first : first + rows]
            n = len(batch)
            if n != rows:
                batch = np.concatenate([batch, np.zeros((rows - n, self.segment_samples), np.float32)])
            if self._stft is None:
                inputs = {"waveforms": np.ascontiguousarray(batch)}
            else:
                inputs = {"power": self._power_spectrum(batch)}
            if self._planned:
                result = self._run(**inputs)
            else:
                with _native_stderr_silenced():  # the first call plans the graph and says so
                    result = self._run(**inputs)
                self._planned = True
            out.append(np.array(result["fingerprint"][:n], np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)


def fingerprint_file(path, model, hop_seconds=None, batch_size=256):
    """Fingerprints an audio file (any format nnfp reads) with a LiteRT model.

    Args:
        path: the audio file; decoded to mono at the model's rate.
        model: a `LiteFingerprinter` or a LiteRT model folder.
        hop_seconds: seconds between segments; default: the spec's hop.

    Returns:
        (n_segments, d) float32 fingerprints of the segments at `0, hop, 2 hop, ...`; dead air
        (segments below `nnfp.audio.segments.QUIET_DBFS`) as zero rows, as in an index.
    """
    from nnfp.audio.io import load_audio
    from nnfp.audio.segments import fingerprint_segments, segment_waveform

    if not isinstance(model, LiteFingerprinter):
        model = LiteFingerprinter(model)
    hop = model.spec.get("hop_samples") if hop_seconds is None else int(round(hop_seconds * model.sample_rate))
    hop = int(hop or model.segment_samples // 2)
    audio = load_audio(path, model.sample_rate)
    windows = segment_waveform(audio, model.segment_samples, hop)
    return fingerprint_segments(model, windows, batch_size=batch_size)
