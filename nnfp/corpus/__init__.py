"""The generated corpus: music (`synth`), background noise (`noise`), room + microphone
impulse responses (`rooms`, with pyroomacoustics rooms as an optional extra), their shared
signal helpers (`dsp`), and the corpus folder the demo and tests train on (`generate`).
NumPy only (pyroomacoustics only in `rooms`, lazily)."""
