// The nnfp page: identify what the microphone hears or what a file holds (POST /identify), and
// draw the plays that POST /monitor finds in a recording on a timeline. Plain JavaScript, no
// build step and nothing loaded from elsewhere: the service may run on a machine that is offline.
"use strict";

const $ = (selector) => document.querySelector(selector);

// ---------- the service ----------

class ServiceError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, { method, body });
  } catch (error) {
    throw new ServiceError(`the service does not answer (${error.message})`, 0);
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch (_) {
    // not JSON: the status line says what happened
  }
  if (!response.ok) {
    const message = (payload && (payload.error || payload.detail)) || response.statusText;
    throw new ServiceError(`${typeof message === "string" ? message : JSON.stringify(message)} (HTTP ${response.status})`,
      response.status);
  }
  return payload;
}

function postAudio(path, blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  return call("POST", path, form);
}

async function showHealth() {
  const health = $("#health");
  try {
    const h = await call("GET", "health");
    health.textContent = `${h.tracks} tracks, ${h.segments} segments`;
    health.title = "GET /health";
  } catch (error) {
    health.textContent = `service: ${error.message}`;
  }
}

// ---------- formatting ----------

function seconds(s) {
  return `${Number(s).toFixed(1)} s`;
}

function clock(s) {
  s = Math.max(0, s);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  const sec = Number.isInteger(rest) ? String(rest).padStart(2, "0") : rest.toFixed(1).padStart(4, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

function basename(path) {
  return String(path).split(/[\\/]/).pop();
}

function showStatus(element, text, kind) {
  element.textContent = text;
  element.className = `result ${kind || "muted"}`;
}

// ---------- 16-bit mono WAV ----------

function encodeWav(samples, sampleRate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // size of the fmt chunk
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const x = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, x < 0 ? x * 0x8000 : x * 0x7fff, true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

// ---------- the microphone ----------

// Records `duration` seconds of the microphone as Float32 PCM at the audio context's rate.
// AudioWorklet where there is one, ScriptProcessor otherwise (older browsers).
async function recordMicrophone(duration, onProgress) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("this browser gives no microphone here (a page not on localhost needs https)");
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    // The fingerprint wants the room as it is: no echo cancelling, denoising or gain riding.
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const context = new AudioContext();
  try {
    await context.resume();
    const wanted = Math.round(duration * context.sampleRate);
    const recorded = new Float32Array(wanted);
    let filled = 0;
    let finish;
    const done = new Promise((resolve) => { finish = resolve; });
    const take = (block) => {
      const n = Math.min(block.length, wanted - filled);
      recorded.set(block.subarray(0, n), filled);
      filled += n;
      onProgress(filled / wanted);
      if (filled >= wanted) finish();
    };
    const source = context.createMediaStreamSource(stream);
    let node;
    if (context.audioWorklet && typeof AudioWorkletNode !== "undefined") {
      await context.audioWorklet.addModule("static/recorder-worklet.js");
      node = new AudioWorkletNode(context, "nnfp-recorder",
        { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: "explicit" });
      node.port.onmessage = (event) => take(event.data);
    } else {
      node = context.createScriptProcessor(4096, 1, 1);
      node.onaudioprocess = (event) => take(new Float32Array(event.inputBuffer.getChannelData(0)));
    }
    // The graph pulls the recorder only if it reaches the destination; a muted gain keeps the
    // microphone out of the speakers.
    const mute = context.createGain();
    mute.gain.value = 0;
    source.connect(node);
    node.connect(mute);
    mute.connect(context.destination);
    let timer;
    const stalled = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(
        `the microphone gave ${(filled / context.sampleRate).toFixed(1)} s of audio in ${duration + 5} s`)),
      (duration + 5) * 1000);
    });
    try {
      await Promise.race([done, stalled]);
    } finally {
      clearTimeout(timer);
      source.disconnect();
      node.disconnect();
    }
    return { samples: recorded, sampleRate: context.sampleRate };
  } finally {
    stream.getTracks().forEach((track) => track.stop());
    context.close();
  }
}

// ---------- identify ----------

function showIdentified(answer) {
  const result = $("#result");
  const list = $("#candidates");
  list.replaceChildren();
  const matches = (answer && answer.matches) || [];
  const hint = $("#hint");
  hint.textContent = (answer && answer.hint) || "";
  hint.hidden = !hint.textContent;
  delete result.dataset.track;
  delete result.dataset.offset;
  if (!matches.length) {
    showStatus(result, `${answer.query}: not in the catalogue`, "nomatch");
    return;
  }
  const best = matches[0];
  result.dataset.track = best.track;
  result.dataset.offset = best.offset_s;
  showStatus(result, `${best.track} at ${seconds(best.offset_s)} (score ${Number(best.score).toFixed(2)})`, "match");
  for (const other of matches.slice(1)) {
    const item = document.createElement("li");
    item.textContent = `${other.track} at ${seconds(other.offset_s)} (score ${Number(other.score).toFixed(2)})`;
    list.append(item);
  }
}

function showError(element, error) {
  showStatus(element, `error: ${error.message}`, "error");
}

let busy = false;

function setBusy(value) {
  busy = value;
  $("#listen").disabled = value;
  $("#file").disabled = value;
}

async function identify(blob, name) {
  showStatus($("#result"), `identifying ${name}…`);
  $("#candidates").replaceChildren();
  $("#hint").hidden = true;
  showIdentified(await postAudio("identify", blob, name));
}

// The last recording, to play back: did the microphone hear the music?
function showRecording(wav) {
  const player = $("#recording");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(wav);
  $("#heard").hidden = false;
}

async function listen() {
  if (busy) return;
  const duration = Number($("#seconds").value);
  const button = $("#listen");
  const progress = $("#progress");
  if (!(duration >= 1 && duration <= 60)) {
    showStatus($("#result"), "error: listen for 1 to 60 seconds", "error");
    return;
  }
  setBusy(true);
  button.classList.add("recording");
  progress.hidden = false;
  $("#progress-bar").style.width = "0";
  showStatus($("#result"), `listening for ${duration} s…`);
  $("#candidates").replaceChildren();
  try {
    const audio = await recordMicrophone(duration, (fraction) => {
      $("#progress-bar").style.width = `${(100 * fraction).toFixed(1)}%`;
      button.textContent = `Listening… ${Math.ceil(duration * (1 - fraction))} s`;
    });
    button.classList.remove("recording");
    button.textContent = "Listen";
    const stamp = new Date().toISOString().slice(11, 19).replaceAll(":", "");
    const wav = encodeWav(audio.samples, audio.sampleRate);
    showRecording(wav);
    await identify(wav, `microphone-${stamp}.wav`);
  } catch (error) {
    showError($("#result"), error);
  } finally {
    button.classList.remove("recording");
    button.textContent = "Listen";
    progress.hidden = true;
    setBusy(false);
  }
}

async function identifyFile(file) {
  if (busy || !file) return;
  setBusy(true);
  try {
    await identify(file, file.name);
  } catch (error) {
    showError($("#result"), error);
  } finally {
    setBusy(false);
  }
}

// ---------- monitor ----------

// Distinct, readable colours: golden-angle hues in the order tracks first play.
function colour(index) {
  return `hsl(${Math.round((index * 137.508 + 210) % 360)}, 62%, 44%)`;
}

// The length of a recording, where the browser can decode it (the time axis covers it all).
async function recordingSeconds(file) {
  try {
    const context = new OfflineAudioContext(1, 1, 44100);
    const audio = await context.decodeAudioData(await file.arrayBuffer());
    return audio.duration;
  } catch (_) {
    return 0;
  }
}

function tickStep(total) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  return steps.find((step) => total / step <= 10) || 3600 * Math.ceil(total / 36000);
}

function drawTimeline(plays, duration) {
  const timeline = $("#timeline");
  const lanes = $("#lanes");
  const axis = $("#axis");
  const legend = $("#legend");
  const rows = $("#plays tbody");
  lanes.replaceChildren();
  axis.replaceChildren();
  legend.replaceChildren();
  rows.replaceChildren();
  const total = Math.max(duration, ...plays.map((p) => p.end_s), 1);

  const colours = new Map();
  const played = new Map(); // track -> [plays, seconds]
  for (const play of plays) {
    if (!colours.has(play.track)) colours.set(play.track, colour(colours.size));
    const sum = played.get(play.track) || [0, 0];
    played.set(play.track, [sum[0] + 1, sum[1] + (play.end_s - play.start_s)]);
  }

  // Plays that overlap in time go on separate rows (greedy interval partitioning).
  const rowEnds = [];
  const sorted = [...plays].sort((a, b) => a.start_s - b.start_s);
  for (const play of sorted) {
    let row = rowEnds.findIndex((end) => end <= play.start_s);
    if (row < 0) { row = rowEnds.length; rowEnds.push(0); }
    rowEnds[row] = play.end_s;
    const bar = document.createElement("div");
    bar.className = "play";
    bar.dataset.track = play.track;
    bar.dataset.start = play.start_s;
    bar.dataset.end = play.end_s;
    bar.style.left = `${(100 * play.start_s) / total}%`;
    bar.style.width = `${Math.max(0.3, (100 * (play.end_s - play.start_s)) / total)}%`;
    bar.style.top = `${0.2 + row * 2}rem`;
    bar.style.background = colours.get(play.track);
    bar.textContent = basename(play.track);
    bar.title = `${play.track}\n${clock(play.start_s)} – ${clock(play.end_s)} of the recording\n`
      + `from ${clock(play.track_start_s)} of the track, score ${Number(play.score).toFixed(2)}`;
    lanes.append(bar);

    const tr = document.createElement("tr");
    for (const cell of [clock(play.start_s), clock(play.end_s), play.track, clock(play.track_start_s),
      Number(play.score).toFixed(2)]) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.append(td);
    }
    rows.append(tr);
  }
  lanes.style.height = `${Math.max(1, rowEnds.length) * 2 + 0.2}rem`;

  const step = tickStep(total);
  for (let t = 0; t <= total + 1e-9; t += step) {
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.style.left = `${(100 * t) / total}%`;
    tick.textContent = clock(t);
    axis.append(tick);
  }

  for (const [track, [count, secs]] of played) {
    const item = document.createElement("li");
    item.dataset.track = track;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colours.get(track);
    const label = document.createElement("span");
    label.textContent = `${track} (${count} play${count === 1 ? "" : "s"}, ${clock(secs)})`;
    item.append(swatch, label);
    legend.append(item);
  }
  timeline.hidden = plays.length === 0 && duration === 0;
  $("#plays").hidden = plays.length === 0;
}

let monitoring = false;

async function monitorFile(file) {
  if (monitoring || !file) return;
  monitoring = true;
  $("#monitor-file").disabled = true;
  const status = $("#monitor-status");
  showStatus(status, `monitoring ${file.name}…`);
  status.title = "";
  $("#monitor-note").hidden = true;
  try {
    const [answer, duration] = await Promise.all([postAudio("monitor", file, file.name), recordingSeconds(file)]);
    const plays = (answer && answer.plays) || [];
    drawTimeline(plays, duration);
    const tracks = new Set(plays.map((p) => p.track)).size;
    showStatus(status, plays.length
      ? `${file.name}: ${plays.length} play${plays.length === 1 ? "" : "s"} of ${tracks} track${tracks === 1 ? "" : "s"}`
      : `${file.name}: no catalogue track played in it`, plays.length ? "match" : "nomatch");
    if (answer.note) status.title = answer.note;  // odd input (clipped, silent, ...): said, not fatal
    $("#monitor-note").textContent = answer.note ? `note: ${answer.note}` : "";
    $("#monitor-note").hidden = !answer.note;
  } catch (error) {
    drawTimeline([], 0);
    $("#timeline").hidden = true;
    showError(status, error);
  } finally {
    monitoring = false;
    $("#monitor-file").disabled = false;
  }
}

// ---------- wiring ----------

function dropTarget(zone, input, handle) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) handle(event.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = "";  // choosing the same file again is a new query
    if (file) handle(file);
  });
}

$("#listen").addEventListener("click", listen);
dropTarget($("#file-drop"), $("#file"), identifyFile);
dropTarget($("#monitor-drop"), $("#monitor-file"), monitorFile);
// A file dropped anywhere else is not opened by the browser in place of the page.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());
showHealth();
