"""`nnfp.audio.sources`: folders, manifests and prepared caches as lists of usable tracks."""

import pathlib

import numpy as np
import pytest
import soundfile as sf

from nnfp.audio.prepare import prepare_audio
from nnfp.audio.sources import list_audio_files, load_source, load_tracks, read_manifest

SR = 8000


def sine(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_load_tracks_skips_bad_files_and_reports(tmp_path):
    sf.write(tmp_path / "good.wav", sine(300, 2.0, 16000), 16000)
    sf.write(tmp_path / "short.wav", sine(300, 0.5, SR), SR)
    sf.write(tmp_path / "silent.wav", np.zeros(2 * SR, np.float32), SR)
    (tmp_path / "bad.flac").write_bytes(b"not audio at all" * 10)
    sf.write(tmp_path / "good2.flac", sine(500, 1.5, SR), SR)
    paths = [
        tmp_path / n for n in ("good.wav", "short.wav", "silent.wav", "bad.flac", "good2.flac")
    ]
    tracks, kept, skipped = load_tracks(paths, sample_rate=SR, min_seconds=1.0)
    assert kept == [paths[0], paths[4]]
    assert [len(t) for t in tracks] == [2 * SR, int(1.5 * SR)]
    reasons = dict(skipped)
    assert list(reasons) == [paths[1], paths[2], paths[3]]
    assert "too short" in reasons[paths[1]]
    assert "silent" in reasons[paths[2]]
    assert "cannot decode" in reasons[paths[3]]


def test_list_audio_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_audio_files(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as info:
        list_audio_files(tmp_path)
    assert str(tmp_path) in str(info.value) and ".wav" in str(info.value)
    (tmp_path / "b").mkdir()
    for name in ("b/z.WAV", "a.flac", "b/c.mp3"):
        (tmp_path / name).write_bytes(b"")
    found = list_audio_files(tmp_path)
    assert found == sorted([tmp_path / "a.flac", tmp_path / "b/c.mp3", tmp_path / "b/z.WAV"])
    assert list_audio_files(["x.wav", pathlib.Path("y.ogg")]) == [
        pathlib.Path("x.wav"),
        pathlib.Path("y.ogg"),
    ]


def test_manifest_sources_csv_and_json(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("x.wav", "y.flac"):
        sf.write(tmp_path / "a" / name, sine(300, 1.2, SR), SR)
    (tmp_path / "m.csv").write_text("path,track_id\na/x.wav,X1\na/y.flac,\n")
    (tmp_path / "m.json").write_text('[{"path": "a/x.wav", "track_id": 7}, "a/y.flac"]')
    expected = [(tmp_path / "a" / "x.wav", "X1"), (tmp_path / "a" / "y.flac", None)]
    assert read_manifest(tmp_path / "m.csv") == expected
    assert read_manifest(tmp_path / "m.json") == [(expected[0][0], "7"), expected[1]]
    assert list_audio_files(tmp_path / "m.json") == [p for p, _ in expected]
    (tmp_path / "bad.json").write_text('[{"name": "x.wav"}]')
    with pytest.raises(ValueError, match="entry 0 has no 'path'"):
        read_manifest(tmp_path / "bad.json")
    (tmp_path / "empty.csv").write_text("path\n")
    with pytest.raises(FileNotFoundError, match="lists no file"):
        list_audio_files(tmp_path / "empty.csv")


def test_prepared_cache_is_a_source(tmp_path):
    (tmp_path / "music").mkdir()
    sf.write(tmp_path / "music" / "song.flac", sine(440, 1.5, 16000), 16000)
    prepare_audio(tmp_path / "music", tmp_path / "cache", progress=False)
    cached, paths, skipped = load_source(tmp_path / "cache", sample_rate=SR)
    direct, _, _ = load_source(tmp_path / "music" / "song.flac", sample_rate=SR)
    assert cached[0].dtype == np.int16 and paths == [tmp_path / "music" / "song.flac"] and not skipped
    np.testing.assert_allclose(cached[0] / 32768.0, direct[0], atol=1 / 32768)


def test_symlinked_folders_are_followed_and_loops_do_not_repeat(tmp_path):
    music, elsewhere = tmp_path / "music", tmp_path / "elsewhere"
    (music / "albums").mkdir(parents=True)
    elsewhere.mkdir()
    for path in (music / "a.wav", music / "albums" / "b.m4a", elsewhere / "c.flac"):
        path.write_bytes(b"x")
    (music / "linked").symlink_to(elsewhere, target_is_directory=True)
    (music / "albums" / "loop").symlink_to(music, target_is_directory=True)  # music/albums/loop -> music
    (music / "gone").symlink_to(tmp_path / "deleted.wav")
    (music / "cover.jpg").write_bytes(b"x")
    ignored = []
    found = list_audio_files(music, ignored=ignored)
    assert found == [music / "a.wav", music / "albums" / "b.m4a", music / "linked" / "c.flac"]
    reasons = {path.name: reason for path, reason in ignored}
    assert reasons == {
        "cover.jpg": "not an audio file extension (.jpg)",
        "gone": "broken link or not a regular file",
    }


def test_folder_walk_warns_about_files_it_leaves_out(tmp_path, caplog):
    (tmp_path / "a.m4a").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert list_audio_files(tmp_path) == [tmp_path / "a.m4a"]
    assert "Left out 1 file(s)" in caplog.text and "notes.txt: not an audio file extension (.txt)" in caplog.text


def test_the_files_nnfp_writes_beside_its_rooms_are_not_reported(tmp_path, caplog):
    from nnfp.outputs import MARKER_FILE, write_marker

    rooms, mine = tmp_path / "rooms", tmp_path / "mine"
    write_marker(rooms, "impulse_responses")  # as `nnfp data make-irs` marks its folder
    mine.mkdir()
    for folder in (rooms, mine):
        (folder / "rir_00000.wav").write_bytes(b"x")
        (folder / "manifest.json").write_text("{}")
    (rooms / "notes.txt").write_text("x")
    ignored = []
    assert list_audio_files(rooms, ignored=ignored) == [rooms / "rir_00000.wav"]
    assert [path.name for path, _ in ignored] == ["notes.txt"]
    # a manifest.json in a folder nnfp did not make is the user's: still reported
    assert list_audio_files(mine) == [mine / "rir_00000.wav"]
    assert "Left out 1 file(s) under" in caplog.text and "manifest.json" in caplog.text
    assert MARKER_FILE not in caplog.text
