"""The light inference path: an index carries a LiteRT copy of its model, and queries, adds and
monitoring run it without TensorFlow when its probes agree (issue 23)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from nnfp.cli import main

RATE = 8000


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """An untrained tiny model, six generated tracks, an index of four of them and a query."""
    from nnfp.catalogue.build import build_index
    from nnfp.corpus.synth import compose_track

    root = tmp_path_factory.mktemp("litert")
    tiny_model(root / "tiny.keras", seed=3)
    for folder, seeds in (("music", range(4)), ("more", range(10, 12))):
        (root / folder).mkdir()
        for seed in seeds:
            sf.write(root / folder / f"track_{seed:02d}.wav", compose_track(seed, 6.0, RATE), RATE)
    sf.write(root / "query.wav", sf.read(root / "music" / "track_02.wav")[0][RATE : 4 * RATE + 1234], RATE)
    build_index(root / "music", root / "index", model=root / "tiny.keras", index_type="flat", progress=False)
    return root


def _run_cli(*args):
    """`nnfp ARGS` in a process of its own; returns (exit status, stdout, TensorFlow/Keras imported)."""
    code = (
        "import sys; from nnfp.cli import main; status = main(sys.argv[1:]); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}); "
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr); sys.exit(status)"
    )
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    heavy = next(line for line in done.stderr.splitlines() if line.startswith("HEAVY="))[6:]
    return done.returncode, done.stdout, heavy


def test_an_index_carries_a_litert_copy_that_reproduces_its_probes(setup):
    from nnfp.catalogue.fingerprint import (
        LITERT_PROBE_TOLERANCE,
        index_embedder,
        probe_fingerprints,
    )
    from nnfp.lite import LiteFingerprinter

    index = setup / "index"
    meta = json.loads((index / "tracks.json").read_text())
    assert {"litert/model.tflite", "litert/spec.json"} <= set(meta["integrity"]["files"])  # checked like the rest
    embedder = index_embedder(index, meta["metadata"], RATE)
    assert isinstance(embedder, LiteFingerprinter)
    expected = np.asarray(meta["metadata"]["probe"]["fingerprints"], np.float32)
    assert np.max(np.abs(probe_fingerprints(embedder, RATE) - expected)) <= LITERT_PROBE_TOLERANCE
    assert main(["index", "verify", str(index)]) == 0


def test_identify_answers_without_tensorflow_as_tensorflow_does(setup):
    index, query = setup / "index", setup / "query.wav"
    status, lite_out, heavy = _run_cli("identify", index, query, "--json", "--min-score", "0")
    assert status == 0 and heavy == ""  # LiteRT: no TensorFlow, no Keras in the process
    status, tf_out, heavy = _run_cli("identify", index, query, "--json", "--min-score", "0", "--runtime", "tensorflow")
    assert status == 0 and heavy == "keras,tensorflow"
    lite, tf = json.loads(lite_out)["matches"], json.loads(tf_out)["matches"]
    assert lite[0]["track"] == tf[0]["track"] == "track_02.wav" and lite[0]["offset_s"] == tf[0]["offset_s"] == 1.0
    assert [m["track"] for m in lite] == [m["track"] for m in tf]
    np.testing.assert_allclose([m["score"] for m in lite], [m["score"] for m in tf], atol=2e-4)


def test_a_litert_copy_that_disagrees_is_never_used(setup, tmp_path, tiny_model):
    from nnfp.catalogue.fingerprint import ModelMismatchError
    from nnfp.catalogue.identify import Identifier
    from nnfp.lite import LiteFingerprinter

    index = tmp_path / "idx"
    shutil.copytree(setup / "index", index)
    other = tmp_path / "other_index"  # the same catalogue under another (untrained, other seed) model
    from nnfp.catalogue.build import build_index

    tiny_model(tmp_path / "other.keras", seed=4)
    build_index(setup / "music", other, model=tmp_path / "other.keras", progress=False)
    shutil.rmtree(index / "litert")
    shutil.copytree(other / "litert", index / "litert")  # the wrong model's copy
    meta = json.loads((index / "tracks.json").read_text())
    meta.pop("integrity")  # as an older index, so that only the probes can tell
    (index / "tracks.json").write_text(json.dumps(meta))
    auto = Identifier(index)  # falls back to the index's own Keras model
    assert not isinstance(auto.embedder, LiteFingerprinter)
    with pytest.raises(ModelMismatchError, match="LiteRT copy does not reproduce its probe fingerprints"):
        Identifier(index, runtime="litert")


def test_runtime_litert_without_a_copy_says_so(setup, tmp_path, capsys):
    index = tmp_path / "idx"
    shutil.copytree(setup / "index", index)
    shutil.rmtree(index / "litert")
    meta = json.loads((index / "tracks.json").read_text())
    meta.pop("integrity")
    (index / "tracks.json").write_text(json.dumps(meta))
    assert main(["identify", str(index), str(setup / "query.wav"), "--runtime", "litert"]) == 2
    assert "no LiteRT copy of the index's model" in capsys.readouterr().err
    assert main(["identify", str(index), str(setup / "query.wav"), "--min-score", "0"]) == 0  # auto: TensorFlow


def test_add_and_monitor_run_on_the_litert_copy(setup, tmp_path):
    from nnfp.catalogue.build import add_to_index
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.monitor import monitor_stream
    from nnfp.lite import LiteFingerprinter

    index = tmp_path / "idx"
    shutil.copytree(setup / "index", index)
    report = add_to_index(index, setup / "more", progress=False)
    assert report.n_tracks == 2 and (index / "litert" / "model.tflite").is_file()  # kept by the add
    identifier = Identifier(index, min_score=0.9)
    assert isinstance(identifier.embedder, LiteFingerprinter)
    recording = np.concatenate([sf.read(setup / "more" / "track_11.wav", dtype="float32")[0],
                                sf.read(setup / "music" / "track_01.wav", dtype="float32")[0]])
    plays = list(monitor_stream(identifier, [recording], "mix", window_seconds=2.0, min_score=0.9))
    assert [p.track for p in plays] == ["track_11.wav", "track_01.wav"]
