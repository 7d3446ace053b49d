"""The page of `nnfp serve` in a real browser: a headless Chromium (the distribution's, driven by
Playwright) whose microphone is a WAV file listens and identifies, identifies a chosen file, and
draws the plays `POST /monitor` finds. The service is a real `nnfp serve` process (uvicorn) on an
index of 4 generated tracks built with the shipped model.

Never skipped: without Chromium the fixture installs it (scripts/ensure_chromium.py) or fails
with what to install."""

import importlib.util
import io
import os
import pathlib
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import soxr
from playwright.sync_api import sync_playwright

from nnfp.corpus.synth import compose_track

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRACK_SECONDS = 20.0
RATE = 8000
MIC_TRACK, MIC_FROM, MIC_SECONDS = 2, 5.0, 10.0  # the fake microphone plays track_02 from 5 s, looped
LISTEN_SECONDS = 6
WAIT_MS = 30_000


def _ensure_chromium_module():
    spec = importlib.util.spec_from_file_location("ensure_chromium", ROOT / "scripts" / "ensure_chromium.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ensure_chromium():
    module = _ensure_chromium_module()
    try:
        return module.ensure_chromium()
    except module.ChromiumMissing as error:
        pytest.fail(f"the browser test needs Chromium: {error}", pytrace=False)


def _track(seed):
    return compose_track(seed, TRACK_SECONDS, RATE)


def _nnfp(*args, timeout=300):
    done = subprocess.run([sys.executable, "-m", "nnfp.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"nnfp {' '.join(map(str, args))}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An index of track_00..03, and the files the browser plays or uploads."""
    root = tmp_path_factory.mktemp("browser")
    music = root / "music"
    music.mkdir()
    tracks = {seed: _track(seed) for seed in range(4)}
    for seed, audio in tracks.items():
        sf.write(music / f"track_{seed:02d}.wav", audio, RATE)
    _nnfp("index", "build", music, root / "index", "--quiet")
    # Chromium's fake capture device reads a 16-bit PCM WAV; 48 kHz is what it captures at.
    start = int(MIC_FROM * RATE)
    mic = soxr.resample(tracks[MIC_TRACK][start:start + int(MIC_SECONDS * RATE)], RATE, 48000)
    sf.write(root / "microphone.wav", mic, 48000, subtype="PCM_16")
    sf.write(root / "query.wav", tracks[1][3 * RATE:13 * RATE], RATE)  # track_01 from 3 s
    sf.write(root / "unknown.wav", _track(9)[5 * RATE:15 * RATE], RATE)  # not indexed
    sf.write(root / "broadcast.wav", np.concatenate([tracks[1], tracks[3]]), RATE)
    (root / "broken.wav").write_bytes(b"this is not audio")
    return root


@pytest.fixture(scope="module")
def server(files):
    """`nnfp serve INDEX --port 0` (a free port) in a process of its own; its address once it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nnfp.cli", "serve", files / "index", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output, ready, address = [], threading.Event(), []

    def read():
        for line in process.stdout:
            output.append(line)
            found = re.fullmatch(rf"serving {re.escape(str(files / 'index'))} on (http://127\.0\.0\.1:\d+)\n", line)
            if found:
                address.append(found[1])
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not ready.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nnfp serve did not start (exit {process.poll()}):\n{''.join(output)}", pytrace=False)
        url = address[0] + "/"
        while True:  # the line is printed as the server starts; wait until it answers
            try:
                with urllib.request.urlopen(url + "health", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"nnfp serve does not answer:\n{''.join(output)}", pytrace=False)
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(files):
    """Headless Chromium with a fresh profile whose microphone plays `microphone.wav`."""
    chromium = _ensure_chromium()
    args = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={files / 'microphone.wav'}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(files / "profile"), executable_path=chromium, args=args, headless=True,
            viewport={"width": 1100, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser, server):
    """The page, loaded and connected (the header shows GET /health); no uncaught JS errors."""
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server)
    page.wait_for_function("document.querySelector('#health').textContent.includes('4 tracks')", timeout=WAIT_MS)
    yield page
    page.close()
    assert errors == []


def _answer(page):
    """The text of `#result` once a query has been answered (a match, no match or an error)."""
    page.wait_for_selector("#result.match, #result.nomatch, #result.error", timeout=WAIT_MS)
    return page.inner_text("#result")


def _wav_header(wav):
    """(channels, rate, bits, n_frames) of a WAV file's bytes."""
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt " and wav[36:40] == b"data"
    _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", wav[20:36])
    (size,) = struct.unpack("<I", wav[40:44])
    return channels, rate, bits, size // (channels * bits // 8)


def test_listen_identifies_what_the_microphone_hears(page, tmp_path):
    page.fill("#seconds", str(LISTEN_SECONDS))
    page.click("#listen")
    text = _answer(page)
    # The WAV the page sent, as its player plays it back: 16-bit mono, the seconds asked for.
    wav = bytes(page.evaluate("""async () => {
        const response = await fetch(document.querySelector('#recording').src);
        return Array.from(new Uint8Array(await response.arrayBuffer()));
    }"""))
    channels, rate, bits, frames = _wav_header(wav)
    assert (channels, bits) == (1, 16) and rate >= 8000
    assert frames == round(LISTEN_SECONDS * rate)
    heard, _ = sf.read(io.BytesIO(wav))
    assert np.sqrt(np.mean(heard**2)) > 0.01  # music, not the silence of a muted device
    page.screenshot(path=tmp_path / "listen.png")
    match = re.fullmatch(r"(\S+) at (\d+\.\d) s \(score (\d\.\d\d)\)", text)
    assert match, text
    assert pathlib.PurePath(match[1]).name == f"track_{MIC_TRACK:02d}.wav"
    # The capture starts at the file's start: the recording is (about) 5-11 s of the track.
    assert MIC_FROM - 0.5 <= float(match[2]) <= MIC_FROM + MIC_SECONDS - LISTEN_SECONDS + 0.5, text
    assert page.get_attribute("#result", "data-track") == match[1]
    assert page.is_enabled("#listen") and page.inner_text("#listen") == "Listen"


def test_file_input_identifies_a_file(page, files):
    page.set_input_files("#file", files / "query.wav")
    text = _answer(page)
    assert re.fullmatch(r"\S*track_01\.wav at 3\.0 s \(score \d\.\d\d\)", text), text
    assert float(page.get_attribute("#result", "data-offset")) == pytest.approx(3.0, abs=0.3)


def test_a_track_not_indexed_is_not_in_the_catalogue(page, files):
    page.set_input_files("#file", files / "unknown.wav")
    assert _answer(page) == "unknown.wav: not in the catalogue"
    assert page.get_attribute("#result", "data-track") is None


def test_audio_the_service_cannot_read_shows_its_error(page, files):
    page.set_input_files("#file", files / "broken.wav")
    text = _answer(page)
    assert text.startswith("error: ") and "(HTTP 422)" in text, text
    assert page.is_enabled("#file")


def test_monitor_draws_the_plays_on_a_timeline(page, files, tmp_path):
    page.set_input_files("#file", files / "query.wav")  # the README's picture shows both views
    _answer(page)
    page.set_input_files("#monitor-file", files / "broadcast.wav")
    page.wait_for_selector("#monitor-status.match, #monitor-status.nomatch, #monitor-status.error",
                           timeout=WAIT_MS)
    assert page.inner_text("#monitor-status") == "broadcast.wav: 2 plays of 2 tracks"
    bars = page.eval_on_selector_all(".play", """bars => bars.map(bar => {
        const box = bar.getBoundingClientRect();
        return {track: bar.dataset.track, start: +bar.dataset.start, end: +bar.dataset.end, left: box.left,
                width: box.width, colour: getComputedStyle(bar).backgroundColor, text: bar.textContent};
    })""")
    lane = page.eval_on_selector("#lanes", "lane => lane.getBoundingClientRect().width")
    assert [pathlib.PurePath(bar["track"]).name for bar in bars] == ["track_01.wav", "track_03.wav"]
    assert [bar["text"] for bar in bars] == ["track_01.wav", "track_03.wav"]
    for bar, (start, end) in zip(bars, [(0.0, TRACK_SECONDS), (TRACK_SECONDS, 2 * TRACK_SECONDS)], strict=True):
        assert bar["start"] == pytest.approx(start, abs=1.0) and bar["end"] == pytest.approx(end, abs=1.0)
        # Drawn to scale: the axis covers the 40 s of the recording.
        assert bar["width"] == pytest.approx(lane * (bar["end"] - bar["start"]) / (2 * TRACK_SECONDS), abs=3)
    assert bars[0]["left"] < bars[1]["left"] and bars[0]["colour"] != bars[1]["colour"]
    legend = page.eval_on_selector_all("#legend li", "items => items.map(item => item.textContent)")
    assert [re.sub(r" \(.*", "", item) for item in legend] == [bar["track"] for bar in bars]
    ticks = page.eval_on_selector_all(".tick", "ticks => ticks.map(tick => tick.textContent)")
    assert ticks[0] == "0:00" and ticks[-1] == "0:40"
    assert page.locator("#plays tbody tr").count() == 2
    page.screenshot(path=tmp_path / "serve-page.png", full_page=True)


def test_without_chromium_and_apt_the_message_says_what_to_install(monkeypatch):
    module = _ensure_chromium_module()
    monkeypatch.setattr(module, "find_chromium", lambda: None)
    monkeypatch.setattr(module.shutil, "which", lambda name: None)  # no apt-get, no sudo
    with pytest.raises(module.ChromiumMissing, match=r"apt-get install -y chromium"):
        module.ensure_chromium()
