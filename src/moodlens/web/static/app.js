/* moodlens: shared helpers for the upload and webcam pages. Draws faces over a photo or video, lists them, places
   labels, sums a result up and builds the downloads. Colours live in style.css only (--c-*, --o-*). */
"use strict";
(function () {
  const API = document.body.dataset.api;
  const PHONE_WIDTH = 480; // a picture shown narrower than this gets short labels ("3 happy", not "3 happy 87%")
  const MANY_FACES = 3;
  const QUALITY = { small: "small face", blurred: "blurred", profile: "turned away" };

  function pct(p) {
    return Math.round(p * 100) + "%";
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* A colour style.css defines on :root (--o-happy, --o-text...). */
  function cssColor(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  /* The overlay colour of a class (labels and boxes on the picture). */
  function overlayColor(expression) {
    return cssColor("--o-" + expression) || cssColor("--o-other");
  }

  /* Call the API with one image (a Blob or File); options: model, explain, preview, raw. Returns {ok, status, body,
     retryAfter}. */
  async function analyze(image, options, signal) {
    const params = new URLSearchParams();
    // The model picker's value: a class set ("4", "7") or a shipped model's name ("photos").
    if (options.model) params.set(/^[0-9]+$/.test(options.model) ? "classes" : "model", options.model);
    if (options.explain) params.set("explain", "1");
    if (options.preview) params.set("preview", "1"); // the picture back as a JPEG, for a file the page cannot show
    const init = { method: "POST", signal: signal };
    if (options.raw) {
      init.body = image;
      init.headers = { "Content-Type": image.type || "image/jpeg" };
    } else {
      const form = new FormData();
      form.append("image", image, image.name || "image");
      init.body = form;
    }
    const resp = await fetch(API + "?" + params.toString(), init);
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = { detail: "The server answered " + resp.status + " " + resp.statusText + "." };
    }
    const retryAfter = Number(resp.headers.get("Retry-After")) || 1;
    return { ok: resp.ok, status: resp.status, body: body, retryAfter: retryAfter };
  }

  /* A problem+json body as one sentence. */
  function problemText(body, status) {
    if (body && (body.detail || body.title)) return body.detail || body.title;
    return "The server answered " + status + ".";
  }

  /* The faces of a result numbered left to right (by the middle of each box, as shown: mirrored or not), listed
     in that order; a face that carries a tracking id (`id`, the webcam page) keeps that as its number. */
  function numbered(result, mirror) {
    const W = result.width;
    return result.faces.map(function (face, i) {
      const [x, y, w, h] = face.box;
      const left = mirror ? W - x - w : x;
      return { face: face, index: i, box: [left, y, w, h] };
    }).sort(function (a, b) {
      return (a.box[0] + a.box[2] / 2) - (b.box[0] + b.box[2] / 2) || a.box[1] - b.box[1];
    }).map(function (f, k) { f.n = typeof f.face.id === "number" ? f.face.id : k + 1; return f; });
  }

  /* "7 faces: 5 happy, 1 neutral, 1 uncertain", "1 face: happy" (an uncertain face is counted as uncertain, not
     as its best guess). */
  function summaryText(result) {
    const n = result.faces.length;
    if (!n) return "No face found.";
    const counts = new Map();
    let unsure = 0;
    for (const face of result.faces) {
      if (face.uncertain) unsure++;
      else counts.set(face.expression, (counts.get(face.expression) || 0) + 1);
    }
    const order = result.classes || [];
    const parts = Array.from(counts.entries()).sort(function (a, b) {
      return b[1] - a[1] || order.indexOf(a[0]) - order.indexOf(b[0]);
    }).map(function (e) { return e[1] + " " + e[0]; });
    if (unsure) parts.push(unsure + " uncertain");
    if (n === 1) return "1 face: " + (unsure ? "uncertain" : result.faces[0].expression);
    return n + " faces: " + parts.join(", ");
  }

  /* What "uncertain" means, with the model's threshold (from the answer). */
  function uncertainText(threshold) {
    const t = typeof threshold === "number" ? pct(threshold) : "the model's threshold";
    return "A face is marked uncertain when its most likely expression scores under " + t + ": the model is " +
      "then close to guessing between two or more expressions, so treat its label as a guess.";
  }

  /* Place one label per face inside a W x H picture, never over another label and never outside the picture.
     items: [{key, box: [x, y, w, h], texts: [longest, ..., shortest]}]; measure(text) -> {w, h}.
     A label goes above its box, else below it (not over the face), else inside its top or bottom, its left
     edge at the box's (moved in to stay in the picture), without covering another face. The faces share one kind
     of text, the longest with which every label finds such a spot and 3 in 4 keep it (the others take a shorter
     text); with the shortest kind (the number), a label that finds no spot may cover another face, and one that
     still finds none is left out (the face list has it). Bigger faces are placed first.
     Returns a Map key -> {text, x, y, w, h}. */
  function placeLabels(items, W, H, measure, gap) {
    gap = gap === undefined ? 2 : gap;
    const hits = function (a, b) {
      return a.x < b.x + b.w + gap && b.x < a.x + a.w + gap && a.y < b.y + b.h + gap && b.y < a.y + a.h + gap;
    };
    // A label may touch another face's box, not cover it: the gap keeps labels apart, not a label from a box
    // (with it, a label above or below its box always "hit" the next box in a row, and fell back to a number).
    const covers = function (a, b) {
      return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    };
    const rects = items.map(function (it) {
      return { key: it.key, x: it.box[0], y: it.box[1], w: it.box[2], h: it.box[3] };
    });
    const order = items.slice().sort(function (a, b) { return b.box[2] * b.box[3] - a.box[2] * a.box[3]; });
    const sizes = new Map();
    function size(text) {
      if (!sizes.has(text)) sizes.set(text, measure(text));
      return sizes.get(text);
    }
    function spot(it, text, placed, strict) {
      const s = size(text);
      if (s.w > W || s.h > H) return null;
      const [bx, by, bw, bh] = it.box;
      const x = Math.max(0, Math.min(bx, W - s.w));
      for (const y of [by - s.h - 1, by + bh + 1, by + 1, by + bh - s.h - 1]) {
        if (y < 0 || y + s.h > H) continue;
        const r = { text: text, x: x, y: y, w: s.w, h: s.h };
        if (placed.some(function (p) { return hits(r, p); })) continue;
        if (strict && rects.some(function (b) { return b.key !== it.key && covers(r, b); })) continue;
        return r;
      }
      return null;
    }
    const levels = Math.max.apply(null, items.map(function (it) { return it.texts.length; }).concat([1]));
    for (let level = 0; level < levels; level++) {
      const last = level === levels - 1;
      const placed = [];
      const out = new Map();
      let kept = 0;
      for (const it of order) {
        for (let k = Math.min(level, it.texts.length - 1); k < it.texts.length; k++) {
          const r = spot(it, it.texts[k], placed, true);
          if (!r) continue;
          placed.push(r);
          out.set(it.key, r);
          if (k === Math.min(level, it.texts.length - 1)) kept++;
          break;
        }
      }
      // This kind of text, if most faces (3 in 4) keep it and the rest find a spot with a shorter one.
      if (!last && (out.size < items.length || kept < 0.75 * items.length)) continue;
      for (const it of order) {
        if (out.has(it.key)) continue;
        const r = spot(it, it.texts[it.texts.length - 1], placed, false);
        if (r) {
          placed.push(r);
          out.set(it.key, r);
        }
      }
      return out;
    }
    return new Map();
  }

  /* Label texts of a face, longest first: "3 happy 87%", "3 happy", "3" (no number when it is the only face). */
  function labelTexts(f, many, phone) {
    const top = f.face.scores[f.face.expression] || 0;
    const name = f.face.expression + (f.face.uncertain ? "?" : "");
    const texts = many ? [f.n + " " + name + " " + pct(top), f.n + " " + name, String(f.n)]
      : [name + " " + pct(top), name];
    return phone ? texts.slice(1) : texts;
  }

  /* Lay the labels of `overlay` out again for its current size (after drawing, and whenever it is resized). */
  function layoutLabels(overlay) {
    const state = overlay._moodlens;
    if (!state) return;
    const W = overlay.clientWidth;
    const H = overlay.clientHeight;
    if (!W || !H) return;
    const probe = state.probe;
    const phone = W < PHONE_WIDTH;
    const items = state.faces.map(function (f) {
      const r = state.result;
      const box = [f.box[0] * W / r.width, f.box[1] * H / r.height, f.box[2] * W / r.width, f.box[3] * H / r.height];
      const many = state.faces.length > 1 || typeof f.face.id === "number"; // a tracked face shows its id
      return { key: f.n, box: box, texts: labelTexts(f, many, phone) };
    });
    const spots = placeLabels(items, W, H, function (text) {
      probe.textContent = text;
      probe.classList.toggle("num-only", /^\d+$/.test(text));
      return { w: probe.offsetWidth, h: probe.offsetHeight };
    });
    for (const f of state.faces) {
      const label = state.labels.get(f.n);
      const spot = spots.get(f.n);
      label.hidden = !spot;
      if (!spot) continue;
      label.textContent = spot.text;
      label.classList.toggle("num-only", /^\d+$/.test(spot.text));
      label.style.left = spot.x + "px";
      label.style.top = spot.y + "px";
    }
  }

  const resized = typeof ResizeObserver === "function" ? new ResizeObserver(function (entries) {
    for (const e of entries) layoutLabels(e.target);
  }) : null;

  /* Semi-transparent heatmap (rows of 0..1) on a small canvas, stretched over the face box by CSS. */
  function heatmapCanvas(grid) {
    const h = grid.length;
    const w = h ? grid[0].length : 0;
    const canvas = el("canvas", "heatmap");
    canvas.width = Math.max(1, w);
    canvas.height = Math.max(1, h);
    if (!w) return canvas;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = Math.min(1, Math.max(0, Number(grid[y][x]) || 0));
        const i = (y * w + x) * 4;
        // blue (cold) -> yellow -> red (hot); cold cells stay nearly transparent
        img.data[i] = Math.round(255 * Math.min(1, 2 * v));
        img.data[i + 1] = Math.round(255 * Math.min(1, 2 - 2 * v) * Math.min(1, 2 * v + 0.2));
        img.data[i + 2] = Math.round(255 * Math.max(0, 1 - 2 * v));
        img.data[i + 3] = Math.round(255 * (0.1 + 0.6 * v));
      }
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }

  /* Draw a result's faces into `overlay` (a box over the picture): boxes in % so they scale, labels placed in
     pixels by layoutLabels. options.mirror: the picture is shown mirrored (the webcam preview). */
  function drawFaces(overlay, result, options) {
    const mirror = !!(options && options.mirror);
    overlay.replaceChildren();
    const W = result.width;
    const H = result.height;
    const faces = numbered(result, mirror);
    const labels = new Map();
    const explain = uncertainText(result.uncertain_below);
    for (const f of faces) {
      const face = f.face;
      const [x, y, w, h] = f.box;
      const box = el("div", "face-box" + (face.uncertain ? " uncertain" : ""));
      box.dataset.face = f.n;
      box.dataset.expression = face.expression;
      box.style.left = (100 * x / W) + "%";
      box.style.top = (100 * y / H) + "%";
      box.style.width = (100 * w / W) + "%";
      box.style.height = (100 * h / H) + "%";
      const top = face.scores[face.expression] || 0;
      box.title = "Face " + f.n + ": " + face.expression + " " + pct(top) + (face.uncertain ? "\n" + explain : "");
      if (face.heatmap) box.append(heatmapCanvas(face.heatmap));
      const label = el("span", "face-label" + (face.uncertain ? " uncertain" : ""));
      label.dataset.face = f.n;
      label.dataset.expression = face.expression;
      label.title = box.title;
      label.hidden = true; // until layoutLabels finds it a spot
      labels.set(f.n, label);
      overlay.append(box);
    }
    labels.forEach(function (label) { overlay.append(label); });
    const probe = el("span", "face-label probe");
    probe.setAttribute("aria-hidden", "true");
    overlay.append(probe);
    overlay._moodlens = { result: result, faces: faces, labels: labels, probe: probe };
    layoutLabels(overlay);
    if (resized && !overlay._observed) {
      resized.observe(overlay);
      overlay._observed = true;
    }
    return faces;
  }

  /* A square crop around a face, `size` px, from an <img> or <canvas> that shows the analysed picture. */
  function thumbnail(source, result, f, mirror, size) {
    size = size || 64;
    const canvas = el("canvas", "thumb");
    canvas.width = size;
    canvas.height = size;
    canvas.setAttribute("aria-hidden", "true");
    const sw = source.naturalWidth || source.width;
    const sh = source.naturalHeight || source.height;
    if (!sw || !sh) return canvas;
    const sx = sw / result.width;
    const sy = sh / result.height;
    const [x, y, w, h] = f.face.box; // picture coordinates, not mirrored
    const side = Math.max(w, h) * 1.25;
    const ctx = canvas.getContext("2d");
    if (mirror) {
      ctx.translate(size, 0);
      ctx.scale(-1, 1);
    }
    try {
      ctx.drawImage(source, (x + w / 2 - side / 2) * sx, (y + h / 2 - side / 2) * sy, side * sx, side * sy,
        0, 0, size, size);
    } catch (e) { /* a picture the browser cannot draw: the thumbnail stays empty */ }
    return canvas;
  }

  /* One <li> per face, numbered as on the picture: thumbnail, number and expression, a <meter> per class. With
     more than MANY_FACES faces only each face's top class shows until the face is highlighted. */
  function faceList(list, result, options) {
    options = options || {};
    list.replaceChildren();
    list.classList.toggle("many", result.faces.length > MANY_FACES);
    const explain = uncertainText(result.uncertain_below);
    for (const f of numbered(result, options.mirror)) {
      const face = f.face;
      const item = el("li", "face-item");
      item.dataset.face = f.n;
      item.dataset.expression = face.expression;
      const head = el("button", "face-head");
      head.type = "button";
      head.setAttribute("aria-pressed", "false");
      if (options.image) head.append(thumbnail(options.image, result, f, options.mirror));
      const title = el("span", "face-title");
      if (!options.image) title.append(el("span", "swatch"));
      title.append(el("span", "face-name", "Face " + f.n + ": " + face.expression));
      title.append(el("span", "face-top", pct(face.scores[face.expression] || 0)));
      if (face.uncertain) {
        const badge = el("span", "badge", "uncertain");
        badge.title = explain;
        title.append(badge);
      }
      if (face.quality && face.quality !== "ok") {
        const why = QUALITY[face.quality] || face.quality;
        const badge = el("span", "badge quality", why);
        badge.title = "This face is hard to read (" + why + "): treat its label with care.";
        title.append(badge);
      }
      head.append(title);
      item.append(head);
      item.append(el("p", "face-score", "face detector score " + face.score.toFixed(2)));
      const bars = el("div", "bars");
      const entries = Object.entries(face.scores).sort(function (a, b) { return b[1] - a[1]; });
      for (const [name, p] of entries) {
        const row = el("div", "bar-row" + (name === face.expression ? " top" : ""));
        row.dataset.expression = name;
        row.append(el("span", "bar-name", name));
        const meter = el("meter", "bar");
        meter.min = 0;
        meter.max = 1;
        meter.value = p;
        meter.textContent = pct(p);
        meter.setAttribute("aria-label", name);
        row.append(meter);
        row.append(el("span", "pct", pct(p)));
        bars.append(row);
      }
      item.append(bars);
      list.append(item);
    }
  }

  /* Hovering or clicking a face in the list highlights its box and label, and the other way round. A click
     keeps the highlight until the next click. Listeners go on `overlay` and `list` once; they survive redraws. */
  function linkFaces(overlay, list) {
    if (overlay._linked) return;
    overlay._linked = true;
    let hovered = null;
    let selected = null;
    function show() {
      const n = hovered !== null ? hovered : selected;
      overlay.classList.toggle("has-active", n !== null);
      for (const node of overlay.querySelectorAll("[data-face]")) {
        node.classList.toggle("active", node.dataset.face === String(n));
      }
      for (const node of list.querySelectorAll(".face-item")) {
        node.classList.toggle("active", node.dataset.face === String(n));
        const head = node.querySelector(".face-head");
        if (head) head.setAttribute("aria-pressed", String(node.dataset.face === String(selected)));
      }
    }
    function faceOf(event, root) {
      const node = event.target.closest("[data-face]");
      return node && root.contains(node) ? node.dataset.face : null;
    }
    function hover(root) {
      root.addEventListener("mouseover", function (e) { hovered = faceOf(e, root); show(); });
      root.addEventListener("mouseleave", function () { hovered = null; show(); });
    }
    hover(overlay);
    hover(list);
    list.addEventListener("click", function (e) {
      if (!e.target.closest(".face-head")) return;
      const n = faceOf(e, list);
      selected = selected === n ? null : n;
      show();
    });
    overlay.addEventListener("click", function (e) {
      const n = faceOf(e, overlay);
      if (n === null) return;
      selected = selected === n ? null : n;
      show();
      const item = list.querySelector('.face-item[data-face="' + n + '"]');
      if (item && selected !== null) item.scrollIntoView({ block: "nearest" });
    });
    list.addEventListener("focusin", function (e) { hovered = faceOf(e, list); show(); });
    list.addEventListener("focusout", function () { hovered = null; show(); });
    overlay._reshow = show;
  }

  /* Re-apply the highlight after a redraw (webcam frames). */
  function relink(overlay) {
    if (overlay._reshow) overlay._reshow();
  }

  // --- downloads ---------------------------------------------------------------------------------------------

  function stem(name) {
    const base = (name || "photo").replace(/\.[^./\\]*$/, "");
    return base.replace(/[^\w.-]+/g, "_").slice(0, 80) || "photo";
  }

  /* One photo's result as the JSON download has it: the API's answer, faces numbered as on the page. */
  function exportResult(name, result) {
    const faces = numbered(result).map(function (f) { return Object.assign({ face: f.n }, f.face); });
    return Object.assign({ file: name }, result, { faces: faces });
  }

  /* RFC 4180 CSV; cells a spreadsheet would run as a formula get a leading apostrophe. */
  function csvCell(v) {
    let s = v === null || v === undefined ? "" : String(v);
    if (/^[=+\-@\t\r]/.test(s) && typeof v === "string") s = "'" + s;
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  /* One row per face (a photo without a face gets one row with no face number), a column per class. */
  function toCSV(photos) {
    const classes = [];
    for (const p of photos) for (const c of p.result.classes || []) if (!classes.includes(c)) classes.push(c);
    const head = ["file", "face", "x", "y", "width", "height", "expression", "confidence", "uncertain", "quality",
      "detector_score"].concat(classes);
    const rows = [head];
    for (const p of photos) {
      const faces = numbered(p.result);
      if (!faces.length) rows.push([p.name, "", "", "", "", "", "", "", "", "", ""].concat(classes.map(function () { return ""; })));
      for (const f of faces) {
        const face = f.face;
        rows.push([p.name, f.n].concat(face.box.map(function (v) { return Math.round(v * 10) / 10; }), [
          face.expression, face.scores[face.expression], face.uncertain, face.quality, face.score,
        ], classes.map(function (c) { return c in face.scores ? face.scores[c] : ""; })));
      }
    }
    return rows.map(function (r) { return r.map(csvCell).join(","); }).join("\r\n") + "\r\n";
  }

  function download(blob, filename) {
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = filename;
    a.hidden = true;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 60000);
  }

  function downloadJSON(value, filename) {
    download(new Blob([JSON.stringify(value, null, 2) + "\n"], { type: "application/json" }), filename);
  }

  function downloadCSV(photos, filename) {
    download(new Blob([toCSV(photos)], { type: "text/csv" }), filename);
  }

  /* The photo at full size with every box and label drawn on it, as a PNG (or JPEG for a JPEG/HEIC photo). */
  function annotatedImage(img, result, type) {
    const W = result.width;
    const H = result.height;
    const canvas = document.createElement("canvas");
    canvas.width = W;
    canvas.height = H;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, W, H);
    const side = Math.max(W, H);
    const line = Math.max(2, Math.round(side / 320));
    const font = Math.max(12, Math.round(side / 60));
    const pad = Math.round(font * 0.3);
    ctx.font = "700 " + font + "px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
    ctx.textBaseline = "top";
    const faces = numbered(result);
    for (const f of faces) {
      const [x, y, w, h] = f.box;
      ctx.setLineDash(f.face.uncertain ? [line * 3, line * 2] : []);
      ctx.lineWidth = line + 2;
      ctx.strokeStyle = cssColor("--o-ring");
      ctx.strokeRect(x, y, w, h);
      ctx.lineWidth = line;
      ctx.strokeStyle = overlayColor(f.face.expression);
      ctx.strokeRect(x, y, w, h);
    }
    ctx.setLineDash([]);
    const items = faces.map(function (f) { return { key: f.n, box: f.box, texts: labelTexts(f, faces.length > 1, false) }; });
    const spots = placeLabels(items, W, H, function (text) {
      return { w: Math.ceil(ctx.measureText(text).width) + 2 * pad, h: font + 2 * pad };
    }, line);
    for (const f of faces) {
      const s = spots.get(f.n);
      if (!s) continue;
      ctx.fillStyle = overlayColor(f.face.expression);
      ctx.fillRect(s.x, s.y, s.w, s.h);
      ctx.fillStyle = cssColor("--o-text");
      ctx.fillText(s.text, s.x + pad, s.y + pad);
    }
    const jpeg = type === "image/jpeg";
    return new Promise(function (resolve) {
      canvas.toBlob(resolve, jpeg ? "image/jpeg" : "image/png", 0.92);
    });
  }

  window.Moodlens = {
    analyze, problemText, drawFaces, faceList, linkFaces, relink, layoutLabels, placeLabels, numbered,
    summaryText, uncertainText, exportResult, toCSV, download, downloadJSON, downloadCSV, annotatedImage, stem, el,
    pct,
  };
})();
