/* moodlens webcam page: capture frames, send them (JPEG, up to 640 px on the long side) one at a time, draw faces
   on the video. Each face keeps its number from frame to frame (a tracker in this page, as the engine's
   engine/track.py does for videos) and its scores are averaged over its last few frames. Between whole frames
   only tiles around the tracked faces are sent, side by side in one picture (engine/track.py's RegionSearch and
   Mosaic). The preview is mirrored
   (CSS, like a mirror); the frames sent are not, and the boxes are drawn mirrored to match. */
"use strict";
(function () {
  const M = window.Moodlens;
  // 640 px keeps a face 2-3 m from a laptop camera at 30-50 px, enough to find and read it (at 320 px it was
  // 15-25 px: found, but read as "uncertain"); the server decodes large JPEGs at a reduced size for detection.
  const LONG_SIDE = 640;
  const QUALITY = 0.8;
  const MIN_INTERVAL_MS = 50; // at most 20 frames a second (the server's default rate limit per client)
  // frames on their way at once. 2 overlaps encoding and sending with the analysis, but on the 2-core dev host
  // (CPU-bound, loaded) it gave the same fps with twice the lag (270 ms instead of 120): benchmarks/bench_webcam.py
  const IN_FLIGHT = 1;
  // tracking (the same rules and defaults as engine/track.py): greedy IoU matching against each face's predicted
  // box, then the nearest face within one face size; a face unseen for more than MAX_MISSED frames is gone
  const IOU_MIN = 0.3;
  const MAX_MISSED = 5;
  const MAX_JUMP = 1.0;
  const ALPHA = 0.4; // weight of the newest frame in each face's moving average of its scores
  // region search (engine/track.py's RegionSearch and Mosaic, same rules and defaults): a whole 640x480 frame
  // with faces 2-3 m away takes the server's slow detector path (25-30 ms of one core for the frame's small
  // faces); tiles around them, cut at their own pixels and laid side by side, are found by the fast one. The
  // whole frame still goes every FULL_EVERY frames (faces that come into view), and whenever a face was missed.
  const FULL_EVERY = 10;
  const MARGIN = 0.5; // face sizes around each tracked face's predicted box
  const MAX_AREA = 0.5; // tiles covering more than this share of the frame: send the frame
  const MIN_REGION = 96; // px, the smallest tile side
  // the face list (thumbnails, a bar per class) is rebuilt at most this often unless its faces change: rebuilt
  // for every frame it took the browser more CPU than the server's analysis (benchmarks/bench_webcam.py)
  const LIST_EVERY_MS = 250;
  const CATCH_UP = 3; // frames a late frame's successors may go early to keep the average at the cap
  const startBtn = document.getElementById("start");
  const stopBtn = document.getElementById("stop");
  const modelPick = document.getElementById("cam-classes");
  const fpsOut = document.getElementById("fps");
  const message = document.getElementById("cam-message");
  const stage = document.getElementById("cam-stage");
  const video = document.getElementById("video");
  const overlay = document.getElementById("cam-overlay");
  const list = document.getElementById("cam-faces");
  const summary = document.getElementById("cam-summary"); // not a live region: it changes with every frame
  const note = document.getElementById("cam-uncertain-note");
  // one canvas per frame that can be on its way, and one more: a frame's thumbnails are cut from its own canvas
  const canvases = [0, 1, 2].map(function () { return document.createElement("canvas"); });
  const mosaicCanvas = document.createElement("canvas"); // the tiles of a frame sent instead of all of it

  let stream = null;
  let session = 0; // bumped on every start and stop; a loop whose session is over ends
  const controllers = new Set(); // one per request on its way
  let tracker = makeTracker();

  function iou(a, b) {
    const iw = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
    const ih = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
    if (iw <= 0 || ih <= 0) return 0;
    const inter = iw * ih;
    const union = a[2] * a[3] + b[2] * b[3] - inter;
    return union > 0 ? inter / union : 0;
  }

  /* Ids for the faces of successive frames (boxes [x, y, w, h]) and their smoothed scores. */
  function makeTracker() {
    let tracks = []; // {id, box, vx, vy, missed, hits, scores}
    let nextId = 1;
    let sinceFull = 0;

    function predicted(t) {
      const k = t.missed + 1;
      return [t.box[0] + t.vx * k, t.box[1] + t.vy * k, t.box[2], t.box[3]];
    }

    function follow(t, box) {
      const k = t.missed + 1;
      const dx = (box[0] + box[2] / 2 - t.box[0] - t.box[2] / 2) / k;
      const dy = (box[1] + box[3] / 2 - t.box[1] - t.box[3] / 2) / k;
      t.vx = t.hits === 1 ? dx : 0.5 * t.vx + 0.5 * dx;
      t.vy = t.hits === 1 ? dy : 0.5 * t.vy + 0.5 * dy;
      t.box = box;
      t.missed = 0;
      t.hits++;
    }

    function update(boxes) {
      const ids = boxes.map(function () { return null; });
      const freeT = new Set(tracks.map(function (_, i) { return i; }));
      const freeF = new Set(boxes.map(function (_, i) { return i; }));
      const pred = tracks.map(predicted);
      function assign(pairs) {
        for (const [, t, f] of pairs) {
          if (!freeT.has(t) || !freeF.has(f)) continue;
          follow(tracks[t], boxes[f]);
          ids[f] = tracks[t].id;
          freeT.delete(t);
          freeF.delete(f);
        }
      }
      const overlaps = [];
      for (const t of freeT) for (const f of freeF) {
        const v = iou(pred[t], boxes[f]);
        if (v >= IOU_MIN) overlaps.push([v, t, f]);
      }
      assign(overlaps.sort(function (a, b) { return b[0] - a[0]; }));
      const near = [];
      for (const t of freeT) for (const f of freeF) {
        const p = pred[t];
        const b = boxes[f];
        const size = Math.sqrt(Math.max(p[2] * p[3], 1e-9));
        const ratio = Math.sqrt(Math.max(b[2] * b[3], 1e-9)) / size;
        const dist = Math.hypot(b[0] + b[2] / 2 - p[0] - p[2] / 2, b[1] + b[3] / 2 - p[1] - p[3] / 2) / size;
        if (dist <= MAX_JUMP && ratio > 0.5 && ratio < 2) near.push([dist, t, f]);
      }
      assign(near.sort(function (a, b) { return a[0] - b[0]; }));
      for (const t of freeT) tracks[t].missed++;
      for (const f of Array.from(freeF).sort(function (a, b) { return a - b; })) {
        tracks.push({ id: nextId, box: boxes[f], vx: 0, vy: 0, missed: 0, hits: 1, scores: null });
        ids[f] = nextId++;
      }
      const byId = new Map(tracks.map(function (t) { return [t.id, t]; }));
      tracks = tracks.filter(function (t) { return t.missed <= MAX_MISSED; });
      return ids.map(function (id) { return byId.get(id); });
    }

    /* [lo, hi) as whole pixels inside [0, size), widened to MIN_REGION where the frame allows. */
    function grow(lo, hi, size) {
      lo = Math.max(0, Math.floor(lo));
      hi = Math.min(size, Math.ceil(hi));
      if (hi <= lo) return [lo, hi];
      const short = MIN_REGION - (hi - lo);
      if (short > 0) {
        lo = Math.max(0, lo - Math.floor(short / 2));
        hi = Math.min(size, lo + MIN_REGION);
        lo = Math.max(0, hi - MIN_REGION);
      }
      return [lo, hi];
    }

    /* Boxes [x0, y0, x1, y1] with every overlapping pair replaced by its union, until none overlap. */
    function merged(boxes) {
      boxes = boxes.map(function (b) { return b.slice(); });
      for (let again = true; again;) {
        again = false;
        for (let i = 0; i < boxes.length && !again; i++) {
          for (let j = i + 1; j < boxes.length && !again; j++) {
            const a = boxes[i];
            const b = boxes[j];
            if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) {
              boxes[i] = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])];
              boxes.splice(j, 1);
              again = true;
            }
          }
        }
      }
      return boxes;
    }

    /* The tiles [[x, y, w, h], ...] of the next frame (width x height) to send, or null for the whole frame. */
    function tiles(width, height) {
      sinceFull++;
      if (!tracks.length || sinceFull >= FULL_EVERY || tracks.some(function (t) { return t.missed > 0; })) {
        sinceFull = 0;
        return null;
      }
      const grown = tracks.map(function (t) {
        const [x, y, w, h] = predicted(t);
        const pad = MARGIN * Math.max(w, h);
        const [x0, x1] = grow(x - pad, x + w + pad, width);
        const [y0, y1] = grow(y - pad, y + h + pad, height);
        return [x0, y0, x1, y1];
      });
      const out = merged(grown).map(function (b) { return [b[0], b[1], b[2] - b[0], b[3] - b[1]]; });
      const area = out.reduce(function (sum, t) { return sum + t[2] * t[3]; }, 0);
      if (out.some(function (t) { return t[2] <= 0 || t[3] <= 0; }) || area > MAX_AREA * width * height) {
        sinceFull = 0;
        return null;
      }
      return out.sort(function (a, b) { return a[0] - b[0] || a[1] - b[1] || a[2] - b[2] || a[3] - b[3]; });
    }

    /* The result with each face given its id (`id`) and its scores averaged over its recent frames (the
       expression and "uncertain" follow from the averaged scores). */
    function track(result) {
      const found = update(result.faces.map(function (f) { return f.box; }));
      const threshold = typeof result.uncertain_below === "number" ? result.uncertain_below : 0.5;
      const faces = result.faces.map(function (face, i) {
        const t = found[i];
        const scores = {};
        for (const [name, p] of Object.entries(face.scores)) {
          scores[name] = t.scores && name in t.scores ? ALPHA * p + (1 - ALPHA) * t.scores[name] : p;
        }
        t.scores = scores;
        let top = face.expression;
        for (const name in scores) if (scores[name] > (scores[top] || 0)) top = name;
        return Object.assign({}, face, { id: t.id, scores: scores, expression: top,
          uncertain: scores[top] < threshold });
      });
      return Object.assign({}, result, { faces: faces });
    }

    return { track: track, tiles: tiles };
  }

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

  /* Tiles laid out as engine/track.py's Mosaic does: a grid of ceil(sqrt(n)) columns, cells as large as the
     largest tile, each tile at its cell's top-left corner. */
  function mosaicOf(tiles) {
    const cols = Math.ceil(Math.sqrt(tiles.length));
    const cw = Math.max.apply(null, tiles.map(function (t) { return t[2]; }));
    const ch = Math.max.apply(null, tiles.map(function (t) { return t[3]; }));
    const origin = function (i) { return [(i % cols) * cw, Math.floor(i / cols) * ch]; };
    /* [dx, dy] moving a box found in the mosaic to the frame, or null when its centre is on the filler. */
    function offset(box) {
      const cx = box[0] + box[2] / 2;
      const cy = box[1] + box[3] / 2;
      const col = Math.floor(cx / cw);
      const i = Math.floor(cy / ch) * cols + col;
      if (cx < 0 || cy < 0 || col >= cols || i >= tiles.length) return null;
      const [mx, my] = origin(i);
      if (cx - mx >= tiles[i][2] || cy - my >= tiles[i][3]) return null;
      return [tiles[i][0] - mx, tiles[i][1] - my];
    }
    return { tiles: tiles, width: cw * cols, height: ch * Math.ceil(tiles.length / cols), origin: origin,
      offset: offset };
  }

  /* The current video frame drawn into `canvas` (which keeps it for the face thumbnails), and as a JPEG: all of
     it, or only the tiles the tracker asks for ({blob, mosaic: see mosaicOf, or null}). */
  async function grab(canvas) {
    const w = video.videoWidth;
    const h = video.videoHeight;
    const scale = Math.min(1, LONG_SIDE / Math.max(w, h));
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(h * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    const tiles = tracker.tiles(canvas.width, canvas.height);
    const mosaic = tiles ? mosaicOf(tiles) : null;
    let source = canvas;
    if (mosaic) {
      mosaicCanvas.width = mosaic.width;
      mosaicCanvas.height = mosaic.height;
      const ctx = mosaicCanvas.getContext("2d");
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, mosaic.width, mosaic.height);
      tiles.forEach(function (t, i) {
        const [mx, my] = mosaic.origin(i);
        ctx.drawImage(canvas, t[0], t[1], t[2], t[3], mx, my, t[2], t[3]);
      });
      source = mosaicCanvas;
    }
    const blob = await new Promise(function (resolve) { source.toBlob(resolve, "image/jpeg", QUALITY); });
    return { blob: blob, mosaic: mosaic };
  }

  /* An answer for a mosaic, in the whole frame's pixels (tiles are cut at the frame's scale); a face centred on
     the filler between tiles is no face of the frame. */
  function inFrame(body, mosaic, canvas) {
    if (!mosaic) return body;
    const faces = [];
    for (const f of body.faces) {
      const d = mosaic.offset(f.box);
      if (!d) continue;
      faces.push(Object.assign({}, f, {
        box: [f.box[0] + d[0], f.box[1] + d[1], f.box[2], f.box[3]],
        keypoints: (f.keypoints || []).map(function (p) { return [p[0] + d[0], p[1] + d[1]]; }),
      }));
    }
    return Object.assign({}, body, { width: canvas.width, height: canvas.height, faces: faces });
  }

  /* Frames go out at most every MIN_INTERVAL_MS on average (paced by a clock: a frame late by a slow answer lets
     the next few go early), with up to IN_FLIGHT on their way at once. An answer older than one already shown
     is dropped, so the tracker sees frames in order. */
  async function loop(id) {
    const st = { last: performance.now(), fps: 0, seq: 0, shown: 0, pauseUntil: 0, pending: 0, wake: null,
      listed: null, listedAt: 0 };
    let due = 0;
    while (id === session) {
      const wait = Math.max(due, st.pauseUntil) - performance.now();
      if (wait > 0) await sleep(wait);
      if (id !== session) break;
      if (st.pending >= IN_FLIGHT) {
        await Promise.race([new Promise(function (r) { st.wake = r; }), sleep(1000)]);
        continue;
      }
      if (video.readyState < 2 || !video.videoWidth) {
        await sleep(50);
        continue;
      }
      const now = performance.now();
      due = Math.max(due + MIN_INTERVAL_MS, now - CATCH_UP * MIN_INTERVAL_MS);
      const n = ++st.seq;
      const canvas = canvases[n % canvases.length];
      const frame = await grab(canvas);
      if (id !== session) break;
      if (!frame.blob) {
        await sleep(100);
        continue;
      }
      st.pending++;
      send(id, n, frame, canvas, st).finally(function () {
        st.pending--;
        if (st.wake) st.wake();
        st.wake = null;
      });
    }
  }

  async function send(id, n, frame, canvas, st) {
    const controller = new AbortController();
    controllers.add(controller);
    let res;
    try {
      res = await M.analyze(frame.blob, { model: modelPick.value, raw: true }, controller.signal);
    } catch (e) {
      if (id === session) {
        say("Lost the connection to the server; retrying…", true);
        st.pauseUntil = performance.now() + 1000;
      }
      return;
    } finally {
      controllers.delete(controller);
    }
    if (id !== session) return;
    if (res.status === 429) {
      st.pauseUntil = performance.now() + 1000 * res.retryAfter;
      return;
    }
    if (!res.ok) {
      say(M.problemText(res.body, res.status), true);
      st.pauseUntil = performance.now() + 500;
      return;
    }
    if (n < st.shown) return; // overtaken by a newer frame's answer
    st.shown = n;
    const result = tracker.track(inFrame(res.body, frame.mosaic, canvas));
    M.drawFaces(overlay, result, { mirror: true });
    const now = performance.now();
    const ids = result.faces.map(function (f) { return f.id; }).join(" ");
    if (ids !== st.listed || now - st.listedAt >= LIST_EVERY_MS) {
      M.faceList(list, result, { image: canvas, mirror: true });
      st.listed = ids;
      st.listedAt = now;
    }
    M.relink(overlay);
    const inst = 1000 / Math.max(1, now - st.last);
    st.last = now;
    st.fps = st.fps ? 0.8 * st.fps + 0.2 * inst : inst;
    fpsOut.textContent = st.fps.toFixed(1) + " fps";
    summary.textContent = M.summaryText(result);
    if (message.classList.contains("error")) say("Camera on. Reading expressions…"); // recovered
    if (typeof res.body.uncertain_below === "number") {
      note.textContent = M.uncertainText(res.body.uncertain_below);
      note.hidden = false;
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
    tracker = makeTracker(); // numbers start again at 1 for each camera session
    loop(id);
  }

  function stop(text) {
    session++;
    controllers.forEach(function (c) { c.abort(); });
    controllers.clear();
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

  // the tracker and the tile layout, for tests/test_webcam_tiles.py (checked against engine/track.py's)
  window.MoodlensWebcam = { makeTracker: makeTracker, mosaicOf: mosaicOf };

  startBtn.addEventListener("click", start);
  stopBtn.addEventListener("click", function () { stop(); });
  window.addEventListener("pagehide", function () { if (stream) stop(); });
})();
