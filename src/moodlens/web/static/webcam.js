/* moodlens webcam page: capture frames, send them (320 px JPEG) one at a time, draw faces on the video. The
   preview is mirrored (CSS, like a mirror); the frames sent are not, and the boxes are drawn mirrored to match. */
"use strict";
(function () {
  const M = window.Moodlens;
  const WIDTH = 320;
  const QUALITY = 0.7;
  const MIN_INTERVAL_MS = 66; // at most ~15 frames a second, however fast the server answers
  const startBtn = document.getElementById("start");
  const stopBtn = document.getElementById("stop");
  const classes = document.getElementById("cam-classes");
  const fpsOut = document.getElementById("fps");
  const message = document.getElementById("cam-message");
  const stage = document.getElementById("cam-stage");
  const video = document.getElementById("video");
  const overlay = document.getElementById("cam-overlay");
  const list = document.getElementById("cam-faces");
  const summary = document.getElementById("cam-summary"); // not a live region: it changes with every frame
  const note = document.getElementById("cam-uncertain-note");
  const canvas = document.createElement("canvas");

  let stream = null;
  let session = 0; // bumped on every start and stop; a loop whose session is over ends
  let controller = null;

  function say(text, isError) {
    message.textContent = text;
    message.className = "message" + (isError ? " error" : "");
  }

  function sleep(ms) {
    return new Promise(function (r) { setTimeout(r, ms); });
  }

  function explain(err) {
    switch (err && err.name) {
      case "NotAllowedError":
      case "SecurityError":
      case "PermissionDeniedError":
        return "Camera permission was denied. Allow the camera for this site in your browser's settings, then press Start camera again.";
      case "NotFoundError":
      case "DevicesNotFoundError":
      case "OverconstrainedError":
        return "No camera found. Connect a camera and press Start camera again.";
      case "NotReadableError":
      case "TrackStartError":
      case "AbortError":
        return "The camera is in use by another application, or could not be started.";
      default:
        return "Could not start the camera" + (err && err.message ? ": " + err.message : ".");
    }
  }

  function grab() {
    const w = video.videoWidth;
    const h = video.videoHeight;
    const scale = Math.min(1, WIDTH / w);
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(h * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    return new Promise(function (resolve) { canvas.toBlob(resolve, "image/jpeg", QUALITY); });
  }

  async function loop(id) {
    let last = performance.now();
    let fps = 0;
    let sent = 0;
    while (id === session) {
      const wait = sent + MIN_INTERVAL_MS - performance.now();
      if (wait > 0) await sleep(wait);
      if (id !== session) break;
      if (video.readyState < 2 || !video.videoWidth) {
        await sleep(50);
        continue;
      }
      sent = performance.now();
      const frame = await grab();
      if (id !== session) break;
      if (!frame) {
        await sleep(100);
        continue;
      }
      controller = new AbortController();
      let res;
      try {
        res = await M.analyze(frame, { classes: classes.value, raw: true }, controller.signal);
      } catch (e) {
        if (id !== session) break;
        say("Lost the connection to the server; retrying…", true);
        await sleep(1000);
        continue;
      }
      if (id !== session) break;
      if (res.status === 429) {
        await sleep(1000 * res.retryAfter);
        continue;
      }
      if (!res.ok) {
        say(M.problemText(res.body, res.status), true);
        await sleep(500);
        continue;
      }
      M.drawFaces(overlay, res.body, { mirror: true });
      M.faceList(list, res.body, { image: canvas, mirror: true });
      M.relink(overlay);
      const now = performance.now();
      const inst = 1000 / Math.max(1, now - last);
      last = now;
      fps = fps ? 0.8 * fps + 0.2 * inst : inst;
      fpsOut.textContent = fps.toFixed(1) + " fps";
      summary.textContent = M.summaryText(res.body);
      if (message.classList.contains("error")) say("Camera on. Reading expressions…"); // recovered
      if (typeof res.body.uncertain_below === "number") {
        note.textContent = M.uncertainText(res.body.uncertain_below);
        note.hidden = false;
      }
    }
  }

  async function start() {
    if (stream) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say("This browser cannot use a camera here: the page must be opened over https:// or on localhost.", true);
      return;
    }
    startBtn.disabled = true;
    say("Asking for the camera…");
    const id = ++session;
    let s;
    try {
      s = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" },
        audio: false,
      });
    } catch (err) {
      startBtn.disabled = false;
      say(explain(err), true);
      return;
    }
    if (id !== session) { // stopped while asking
      s.getTracks().forEach(function (t) { t.stop(); });
      return;
    }
    stream = s;
    stream.getVideoTracks().forEach(function (t) {
      t.addEventListener("ended", function () { stop("The camera stopped."); });
    });
    video.srcObject = stream;
    stage.hidden = false;
    try {
      await video.play();
    } catch (err) {
      stop();
      say(explain(err), true);
      return;
    }
    stopBtn.disabled = false;
    say("Camera on. Reading expressions…");
    M.linkFaces(overlay, list);
    loop(id);
  }

  function stop(text) {
    session++;
    if (controller) controller.abort();
    controller = null;
    if (stream) stream.getTracks().forEach(function (t) { t.stop(); });
    stream = null;
    video.pause();
    video.srcObject = null;
    stage.hidden = true;
    overlay.replaceChildren();
    list.replaceChildren();
    summary.textContent = "";
    fpsOut.textContent = "– fps";
    startBtn.disabled = false;
    stopBtn.disabled = true;
    say(typeof text === "string" ? text : "Camera stopped.");
  }

  startBtn.addEventListener("click", start);
  stopBtn.addEventListener("click", function () { stop(); });
  window.addEventListener("pagehide", function () { if (stream) stop(); });
})();
