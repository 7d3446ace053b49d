"""Catalogue operations on fingerprints: the model and fingerprinting (`fingerprint`), resumable
chunks (`chunks`), building and extending an index (`build`), sharded builds (`shards`),
identifying queries (`identify`), monitoring a broadcast (`monitor`), evaluation and
calibration (`evaluation`, `calibration`)."""
