/* moodlens: shared helpers for the upload and webcam pages. Draws faces over a photo or video. */
"use strict";
(function () {
  const CLASS_COLORS = {
    angry: "#e53935", disgust: "#43a047", fear: "#8e24aa", happy: "#f9a825",
    sad: "#1e88e5", surprise: "#00acc1", neutral: "#78909c",
  };
  const API = document.body.dataset.api;

  function color(expression) {
    return CLASS_COLORS[expression] || "#ffffff";
  }

  function pct(p) {
    return Math.round(p * 100) + "%";
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* Call the API with one image (a Blob or File). Returns {ok, status, body, retryAfter}. */
  async function analyze(image, options, signal) {
    const params = new URLSearchParams();
    if (options.classes) params.set("classes", options.classes);
    if (options.explain) params.set("explain", "1");
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

  /* Draw a result's faces into `overlay` (a box positioned over the picture), in % so it scales. */
  function drawFaces(overlay, result) {
    overlay.replaceChildren();
    const W = result.width;
    const H = result.height;
    result.faces.forEach(function (face, i) {
      const [x, y, w, h] = face.box;
      const box = el("div", "face-box" + (face.uncertain ? " uncertain" : ""));
      box.style.setProperty("--face", color(face.expression));
      box.style.left = (100 * x / W) + "%";
      box.style.top = (100 * y / H) + "%";
      box.style.width = (100 * w / W) + "%";
      box.style.height = (100 * h / H) + "%";
      if (y / H < 0.08) box.classList.add("label-inside");
      const label = el("span", "face-label");
      const top = face.scores[face.expression] || 0;
      label.append((result.faces.length > 1 ? (i + 1) + ". " : "") + face.expression + " ");
      label.append(el("span", "pct", pct(top)));
      if (face.uncertain) label.title = "uncertain";
      if (face.heatmap) box.append(heatmapCanvas(face.heatmap));
      box.append(label);
      overlay.append(box);
    });
  }

  /* One <li> per face: heading and a bar per class, highest first. */
  function faceList(list, result) {
    list.replaceChildren();
    result.faces.forEach(function (face, i) {
      const item = el("li", "face-item");
      item.style.setProperty("--face", color(face.expression));
      const head = el("h3");
      head.append(el("span", "swatch"));
      head.append(el("span", "face-name", "Face " + (i + 1) + ": " + face.expression));
      if (face.uncertain) head.append(el("span", "badge", "uncertain"));
      if (face.quality && face.quality !== "ok") {
        const why = {small: "small face", blurred: "blurred", profile: "turned away"}[face.quality] || face.quality;
        const badge = el("span", "badge quality", why);
        badge.title = "This face is hard to read (" + why + "): treat its label with care.";
        head.append(badge);
      }
      item.append(head);
      item.append(el("p", "face-score", "face detector score " + face.score.toFixed(2)));
      const bars = el("dl", "bars");
      const entries = Object.entries(face.scores).sort(function (a, b) { return b[1] - a[1]; });
      for (const [name, p] of entries) {
        const row = el("div", "bar-row" + (name === face.expression ? " top" : ""));
        row.append(el("dt", "", name));
        const dd = el("dd", "bar");
        const fill = el("span", "bar-fill");
        fill.style.width = (100 * p).toFixed(1) + "%";
        fill.style.setProperty("--face", color(name));
        dd.append(fill);
        row.append(dd);
        row.append(el("dd", "pct", pct(p)));
        bars.append(row);
      }
      item.append(bars);
      list.append(item);
    });
  }

  window.Moodlens = { analyze, problemText, drawFaces, faceList, el, pct, color };
})();
