"""Fingerprints without TensorFlow: a LiteRT model and its spec, run by `ai-edge-litert`.

A LiteRT model is a folder (what `nnfp export MODEL OUT --format litert` writes, and
`litert/` inside every index built from a Keras model): `model.tflite`, whose `serve`
signature maps `waveforms` (batch, segment_samples) float32 to `fingerprint` (batch, d),
mel front end included, and `spec.json`, the model's contract (sample rate, segment and
hop samples, embedding size, the digest of the Keras model it was converted from).

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
    "LITERT_SPEC_FILE",
    "LiteFingerprinter",
    "LiteRTUnavailableError",
    "fingerprint_file",
    "is_litert_model",
    "litert_available",
    "read_spec",
    "usable_cores",
]

LITERT_MODEL_FILE = "model.tflite"
LITERT_SPEC_FILE = "spec.json"
SPEC_FORMAT = "nnfp-litert"
SIGNATURE = "serve"
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
        path: a LiteRT model folder (`model.tflite` + `spec.json`).
        num_threads: XNNPACK threads; default: the cores this process may use.

    Example:

    >>> model = LiteFingerprinter("my_index/litert")
    >>> model.fingerprint(np.zeros((4, model.segment_samples), np.float32)).shape
    (4, 128)
    """

    runtime = "litert"

    def __init__(self, path, num_threads=None):
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
        model_path = self.path / LITERT_MODEL_FILE
        self._planned = False
        try:
            self._interpreter = Interpreter(model_path=str(model_path), num_threads=self.num_threads)
            self._run = self._interpreter.get_signature_runner(SIGNATURE)
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
            if self._planned:
                result = self._run(waveforms=np.ascontiguousarray(batch))
            else:
                with _native_stderr_silenced():  # the first call plans the graph and says so
                    result = self._run(waveforms=np.ascontiguousarray(batch))
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
