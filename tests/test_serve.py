"""`nnfp serve`: a real server process on a small index, every endpoint asked over HTTP."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import httpx  # the "test" extra installs it with those of "serve"
import numpy as np
import pytest
import soundfile as sf
from websockets.sync.client import connect

from nnfp.catalogue.fingerprint import DEFAULT_MODEL_PATH
from nnfp.cli import main
from nnfp.corpus.synth import compose_track

RATE = 8000
TOKEN = "test-token-1234"
N_TRACKS = 5

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.exists(), reason="needs the packaged model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """An index of five generated 20 s tracks (packaged model, LiteRT) and audio not in it."""
    root = tmp_path_factory.mktemp("serve")
    music = root / "music"
    music.mkdir()
    tracks = {}
    for i in range(N_TRACKS):
        tracks[f"t{i}.wav"] = compose_track(500 + i, 20.0, RATE)
        sf.write(music / f"t{i}.wav", tracks[f"t{i}.wav"], RATE, subtype="PCM_16")
    index = root / "index"
    built = subprocess.run(
        [sys.executable, "-m", "nnfp.cli", "index", "build", str(music), str(index), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    tracks["new"] = compose_track(600, 20.0, RATE)
    tracks["unknown"] = compose_track(601, 20.0, RATE)
    return {"root": root, "index": index, "tracks": tracks}


def _start(index, *args, log):
    """`nnfp serve INDEX --port 0 ...` in its own process; (process, base URL) once it says it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nnfp.cli", "serve", str(index), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            assert line, f"the server ended ({process.poll()}) before it was ready"
            if line.startswith("serving "):
                assert line.startswith(f"serving {index} on http://127.0.0.1:"), line
                return process, line.split(" on ", 1)[1].strip()
        assert process.poll() is None, f"the server ended with {process.returncode}"
    process.kill()
    raise AssertionError("the server did not say it was ready in 120 s")


@pytest.fixture(scope="module")
def server(corpus):
    log = open(corpus["root"] / "server.log", "w")  # noqa: SIM115 (closed below)
    process, url = _start(
        corpus["index"], "--token", TOKEN, "--max-upload-mb", "1", "--runtime", "auto", log=log
    )
    with httpx.Client(base_url=url, timeout=60) as client:
        yield {"url": url, "client": client, "process": process}
    process.send_signal(signal.SIGTERM)
    try:
        # uvicorn shuts down (requests in flight finish), then ends by the signal it caught.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    text = (corpus["root"] / "server.log").read_text()
    assert "Finished server process" in text and "Traceback" not in text, text[-3000:]


def _wav(tmp_path, audio, name="q.wav", **kwargs):
    path = tmp_path / name
    sf.write(path, audio, RATE, **kwargs)
    return path


def _post(client, route, path, filename=None, **kwargs):
    with open(path, "rb") as f:
        return client.post(route, files={"file": (filename or path.name, f)}, **kwargs)


def _cut(audio, start, seconds):
    return audio[int(start * RATE) : int((start + seconds) * RATE)]


def _auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_health_and_tracks(server):
    client = server["client"]
    health = client.get("/health").json()
    assert health == {"status": "ok", "tracks": N_TRACKS, "segments": health["segments"]}
    assert health["segments"] >= N_TRACKS * 30  # 20 s tracks, a segment every 0.5 s
    tracks = client.get("/tracks").json()["tracks"]
    assert [(t["id"], t["track"]) for t in tracks] == [(i, f"t{i}.wav") for i in range(N_TRACKS)]
    assert all(abs(t["duration_s"] - 20.0) < 0.01 for t in tracks)


def test_identify_answers_what_the_cli_prints(server, corpus, tmp_path, capsys):
    path = _wav(tmp_path, _cut(corpus["tracks"]["t2.wav"], 7.3, 5.0))
    response = _post(server["client"], "/identify", path, filename="clip.wav")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == "clip.wav"
    assert answer["matches"][0]["track"] == "t2.wav"
    assert abs(answer["matches"][0]["offset_s"] - 7.3) <= 0.2
    capsys.readouterr()
    assert main(["identify", str(corpus["index"]), str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {**printed, "query": "clip.wav"} == answer


def test_identify_a_query_longer_than_every_track_has_the_hint(server, corpus, tmp_path):
    audio = np.concatenate([corpus["tracks"]["t1.wav"], corpus["tracks"]["t3.wav"][:RATE * 2]])
    answer = _post(server["client"], "/identify", _wav(tmp_path, audio)).json()
    assert "nnfp monitor" in answer["hint"]


def test_bad_uploads_are_refused_with_a_reason(server, corpus, tmp_path):
    client = server["client"]
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n" * 100)
    hello = tmp_path / "hello.wav"
    hello.write_text("hello\n")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    short = _wav(tmp_path, _cut(corpus["tracks"]["t1.wav"], 3.0, 0.5), "short.wav")
    silent = _wav(tmp_path, np.zeros(3 * RATE, np.float32), "silent.wav")
    cases = [(text, ""), (hello, "cannot decode"), (empty, "empty"), (short, "too short"), (silent, "silent")]
    for path, reason in cases:
        response = _post(client, "/identify", path)
        assert response.status_code == 422, (path.name, response.text)
        error = response.json()["error"]
        assert error.startswith(f"{path.name}: ") and reason in error, error
        assert "nnfp-upload" not in error  # the temporary file is not named
    # No field `file`, or a form that is not multipart.
    response = client.post("/identify", data={"name": "x"})
    assert response.status_code == 422 and "file" in response.json()["error"]
    assert client.post("/identify", content=b"junk").status_code == 422
    # A 0-byte upload to /monitor too.
    response = _post(client, "/monitor", empty)
    assert response.status_code == 422 and response.json()["error"].startswith("empty.wav: ")


def test_a_cut_mp3_is_answered_or_refused_never_an_internal_error(server, corpus, tmp_path):
    whole = tmp_path / "whole.mp3"
    sf.write(whole, corpus["tracks"]["t4.wav"], RATE, format="MP3")
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    response = _post(server["client"], "/identify", cut)
    assert response.status_code == 200, response.text  # answered from the ~10 s that decode
    answer = response.json()
    assert answer["matches"][0]["track"] == "t4.wav"
    # ... and said so, naming the upload (never the server's temporary file) and both lengths
    assert re.fullmatch(r"cut\.mp3: truncated or damaged: the header says 20\.0 s, only \d+\.\d s decode; "
                        r"using the \d+\.\d s that exist", answer["warning"]), answer["warning"]
    assert "warning" not in _post(server["client"], "/identify", whole).json()
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(data[:400] + bytes(range(256)) * 8)
    assert _post(server["client"], "/identify", garbage).status_code in (200, 422)


def test_an_upload_name_is_never_a_path(server, corpus, tmp_path):
    path = _wav(tmp_path, _cut(corpus["tracks"]["t0.wav"], 4.0, 5.0))
    response = _post(server["client"], "/identify", path, filename="../../../tmp/evil\\..\\x.wav")
    assert response.status_code == 200
    assert response.json()["query"] == "x.wav"
    assert response.json()["matches"][0]["track"] == "t0.wav"
    assert not os.path.exists("/tmp/evil")


def test_uploads_over_the_limit_are_refused_413(server):
    client = server["client"]
    big = os.urandom(int(1.3 * 2**20))
    response = client.post("/identify", files={"file": ("big.wav", big)})  # Content-Length says it
    assert response.status_code == 413 and "1 MB" in response.json()["error"]

    boundary = "nnfpboundary"

    def chunked():  # no Content-Length: counted as it arrives
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"long.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode()
        for _ in range(24):
            yield os.urandom(64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/identify", content=chunked(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413
    assert client.get("/health").status_code == 200


def test_concurrent_queries_are_answered_right(server, corpus, tmp_path):
    queries = [(f"t{i}.wav", 2.0 + 2 * i) for i in range(4)]
    paths = [_wav(tmp_path, _cut(corpus["tracks"][t], s, 5.0), f"q{i}.wav") for i, (t, s) in enumerate(queries)]
    answers = [[] for _ in queries]

    def ask(i):
        with httpx.Client(base_url=server["url"], timeout=60) as client:
            for _ in range(3):
                answers[i].append(_post(client, "/identify", paths[i]).json())

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (track, start), got in zip(queries, answers, strict=True):
        assert len(got) == 3
        for answer in got:
            assert answer["matches"][0]["track"] == track
            assert abs(answer["matches"][0]["offset_s"] - start) <= 0.2


def _broadcast(corpus):
    t = corpus["tracks"]
    # t0 2..18 s | unknown 6 s | t3 0..16 s
    return np.concatenate([_cut(t["t0.wav"], 2, 16), _cut(t["unknown"], 0, 6), _cut(t["t3.wav"], 0, 16)])


def test_monitor_gives_the_plays_the_cli_prints(server, corpus, tmp_path, capsys):
    path = _wav(tmp_path, _broadcast(corpus), "broadcast.wav", subtype="PCM_16")
    response = _post(server["client"], "/monitor", path)
    assert response.status_code == 200, response.text
    plays = response.json()["plays"]
    assert [p["track"] for p in plays] == ["t0.wav", "t3.wav"]
    assert abs(plays[1]["start_s"] - 22.0) <= 1.5 and abs(plays[0]["track_start_s"] - 2.0) <= 1.5
    capsys.readouterr()
    assert main(["monitor", str(corpus["index"]), str(path), "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [{**p, "recording": "broadcast.wav"} for p in printed] == plays


@pytest.mark.parametrize("rate", [8000, 16000])
def test_stream_sends_the_plays(server, corpus, rate):
    audio = _broadcast(corpus)
    if rate != RATE:
        from nnfp.audio.io import resample

        audio = resample(audio, RATE, rate)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    url = server["url"].replace("http://", "ws://") + f"/stream?rate={rate}"
    plays = []
    with connect(url, open_timeout=30, close_timeout=30) as ws:
        for first in range(0, len(pcm), rate):  # half a second of audio per message
            ws.send(pcm[first : first + rate])
        ws.send("end")
        for message in ws:  # the server closes the socket after the last play
            plays.append(json.loads(message))
    assert [p["track"] for p in plays] == ["t0.wav", "t3.wav"], plays
    assert all(p["recording"] == "stream" for p in plays)
    assert abs(plays[1]["start_s"] - 22.0) <= 1.5


def test_stream_refuses_a_bad_rate(server):
    url = server["url"].replace("http://", "ws://") + "/stream?rate=abc"
    with connect(url, open_timeout=30) as ws:
        assert "rate" in json.loads(ws.recv())["error"]


def test_catalogue_changes_need_the_token(server, corpus, tmp_path):
    client = server["client"]
    new = _wav(tmp_path, corpus["tracks"]["new"], "new.wav")
    for headers in ({}, _auth("wrong"), {"Authorization": TOKEN}):
        response = _post(client, "/tracks", new, headers=headers)
        assert response.status_code == 401 and "Bearer" in response.json()["error"]
        assert client.delete("/tracks/1", headers=headers).status_code == 401
    assert len(client.get("/tracks").json()["tracks"]) == N_TRACKS


def test_an_added_track_is_found_and_a_removed_one_never_again(server, corpus, tmp_path):
    client = server["client"]
    new = _wav(tmp_path, corpus["tracks"]["new"], "upload.wav")
    clip = _wav(tmp_path, _cut(corpus["tracks"]["new"], 9.0, 5.0), "clip.wav")
    assert _post(client, "/identify", clip).json()["matches"] == []

    # A name leading out of its folder, then the same audio twice: refused, nothing added.
    response = client.post("/tracks", files={"file": ("upload.wav", new.read_bytes())},
                           data={"name": "../escape.wav"}, headers=_auth())
    assert response.status_code == 422 and ".." in response.json()["error"]
    response = client.post("/tracks", files={"file": ("upload.wav", new.read_bytes())},
                           data={"name": "added/new.wav"}, headers=_auth())
    assert response.status_code == 201, response.text
    added = response.json()
    assert added == {"id": N_TRACKS, "track": "added/new.wav"}
    response = client.post("/tracks", files={"file": ("again.wav", new.read_bytes())}, headers=_auth())
    assert response.status_code == 422 and "added/new.wav" in response.json()["error"]

    answer = _post(client, "/identify", clip).json()
    assert answer["matches"][0]["track"] == "added/new.wav"
    assert abs(answer["matches"][0]["offset_s"] - 9.0) <= 0.2
    assert client.get("/health").json()["tracks"] == N_TRACKS + 1
    assert (added["id"], "added/new.wav") in [(t["id"], t["track"]) for t in client.get("/tracks").json()["tracks"]]

    # Removed: not listed, never answered, a second removal is 404.
    response = client.delete(f"/tracks/{added['id']}", headers=_auth())
    assert response.status_code == 200
    assert response.json() == {"id": added["id"], "track": "added/new.wav", "removed": True}
    assert all(m["track"] != "added/new.wav" for m in _post(client, "/identify", clip).json()["matches"])
    assert added["id"] not in [t["id"] for t in client.get("/tracks").json()["tracks"]]
    assert client.get("/health").json()["tracks"] == N_TRACKS
    response = client.delete(f"/tracks/{added['id']}", headers=_auth())
    assert response.status_code == 404 and response.json()["error"]
    assert client.delete("/tracks/999", headers=_auth()).status_code == 404

    # An original track removed: its clips are not answered with it any more.
    query = _wav(tmp_path, _cut(corpus["tracks"]["t1.wav"], 6.0, 5.0), "t1clip.wav")
    assert _post(client, "/identify", query).json()["matches"][0]["track"] == "t1.wav"
    assert client.delete("/tracks/1", headers=_auth()).status_code == 200
    assert all(m["track"] != "t1.wav" for m in _post(client, "/identify", query).json()["matches"])


def test_a_change_made_by_the_cli_is_seen_by_the_next_request(server, corpus, tmp_path):
    """The service and the CLI share the index: `nnfp index remove` on the served folder."""
    client = server["client"]
    query = _wav(tmp_path, _cut(corpus["tracks"]["t3.wav"], 4.0, 5.0), "t3clip.wav")
    assert _post(client, "/identify", query).json()["matches"][0]["track"] == "t3.wav"
    before = client.get("/health").json()["tracks"]
    removed = subprocess.run(
        [sys.executable, "-m", "nnfp.cli", "index", "remove", str(corpus["index"]), "t3.wav"],
        capture_output=True, text=True, timeout=120,
    )
    assert removed.returncode == 0 and "removed 3: t3.wav" in removed.stdout, removed.stderr[-2000:]
    assert all(m["track"] != "t3.wav" for m in _post(client, "/identify", query).json()["matches"])
    assert client.get("/health").json()["tracks"] == before - 1
    assert "t3.wav" not in [t["track"] for t in client.get("/tracks").json()["tracks"]]


def test_page_docs_and_metrics(server):
    client = server["client"]
    page = client.get("/")
    assert page.status_code in (200, 404)
    if page.status_code == 200:
        assert "<html" in page.text.lower()
    else:
        assert "index.html" in page.json()["error"]
    assert client.get("/docs").status_code == 200
    assert "/identify" in client.get("/openapi.json").json()["paths"]
    text = client.get("/metrics").text
    assert 'nnfp_requests_total{endpoint="/identify",method="POST",status="200"}' in text
    assert 'nnfp_request_errors_total{endpoint="/identify",status="422"}' in text
    assert 'nnfp_request_errors_total{endpoint="/identify",status="413"}' in text
    assert 'nnfp_request_duration_seconds_bucket{endpoint="/identify",le="1.0"}' in text
    assert 'nnfp_requests_total{endpoint="/tracks/{track_id}",method="DELETE",status="401"}' in text
    assert f"nnfp_catalogue_tracks {float(client.get('/health').json()['tracks'])}" in text
    assert "nnfp_catalogue_segments " in text
    assert 'nnfp_requests_total{endpoint="/stream",method="WEBSOCKET",status="101"}' in text


def test_still_healthy_after_everything(server):
    assert server["process"].poll() is None
    assert server["client"].get("/health").json()["status"] == "ok"


def test_without_a_token_changes_are_off(corpus, tmp_path, monkeypatch):
    import asyncio

    from nnfp import serve
    from nnfp.serve import Catalogue, create_app

    app = create_app(Catalogue(corpus["index"]))  # the app in this process, no server
    monkeypatch.setattr(serve, "WEB_DIR", tmp_path / "no-web")  # an installation without the page
    new = _wav(tmp_path, corpus["tracks"]["new"], "new.wav").read_bytes()

    async def ask():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nnfp") as client:
            for headers in ({}, _auth()):
                response = await client.post("/tracks", files={"file": ("new.wav", new)}, headers=headers)
                assert response.status_code == 403 and "--token" in response.json()["error"]
                assert (await client.delete("/tracks/0", headers=headers)).status_code == 403
            page = await client.get("/")
            assert page.status_code == 404 and "index.html" in page.json()["error"]
            return (await client.get("/health")).json()

    assert asyncio.run(ask())["status"] == "ok"
