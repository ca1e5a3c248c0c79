/* moodlens upload page: pick, drop or paste photos; each is sent to the API and its faces drawn on it. */
"use strict";
(function () {
  const M = window.Moodlens;
  const input = document.getElementById("file-input");
  const drop = document.getElementById("drop");
  const results = document.getElementById("results");
  const classes = document.getElementById("classes");
  const heatmap = document.getElementById("heatmap");
  const clear = document.getElementById("clear");
  const items = [];
  let queue = Promise.resolve();

  function card(file) {
    const article = M.el("article", "result");
    article.dataset.state = "queued";
    const stage = M.el("div", "stage");
    const img = M.el("img");
    img.alt = file.name || "pasted image";
    const url = URL.createObjectURL(file);
    img.src = url;
    const overlay = M.el("div", "overlay");
    stage.append(img, overlay);
    const summary = M.el("div", "summary");
    const title = M.el("h2", "filename", file.name || "Pasted image");
    const status = M.el("p", "status", "Waiting…");
    const faces = M.el("ol", "faces");
    summary.append(title, status, faces);
    article.append(stage, summary);
    img.addEventListener("error", function () {
      stage.replaceChildren(M.el("p", "status", "Your browser cannot show this file; the results are below."));
      stage.classList.add("no-preview");
    });
    return { file, url, article, overlay, status, faces, explained: false };
  }

  function show(item, res) {
    const result = res.body;
    item.article.dataset.state = "done";
    item.explained = heatmap.checked;
    M.drawFaces(item.overlay, result);
    M.faceList(item.faces, result);
    const n = result.faces.length;
    item.status.className = "status" + (n ? "" : " no-face");
    item.status.textContent = n ? (n === 1 ? "1 face found." : n + " faces found.") : "No face found.";
  }

  function fail(item, text) {
    item.article.dataset.state = "error";
    item.overlay.replaceChildren();
    item.faces.replaceChildren();
    item.status.className = "status error";
    item.status.textContent = text;
  }

  async function run(item) {
    if (!item.article.isConnected) return;
    item.article.dataset.state = "busy";
    item.status.className = "status";
    item.status.textContent = "Analysing…";
    for (let attempt = 0; attempt < 5; attempt++) {
      let res;
      try {
        res = await M.analyze(item.file, { classes: classes.value, explain: heatmap.checked });
      } catch (e) {
        fail(item, "Could not reach the server (" + e.message + ").");
        return;
      }
      if (res.status === 429) {
        await new Promise(function (r) { setTimeout(r, 1000 * res.retryAfter); });
        continue;
      }
      if (res.ok) show(item, res);
      else fail(item, M.problemText(res.body, res.status));
      return;
    }
    fail(item, "The server is busy; try again in a moment.");
  }

  function enqueue(item) {
    queue = queue.then(function () { return run(item); });
  }

  function add(files) {
    const batch = document.createDocumentFragment(); // newest batch on top, in the order picked
    for (const file of files) {
      const item = card(file);
      items.push(item);
      batch.append(item.article);
      enqueue(item);
    }
    results.prepend(batch);
    clear.hidden = items.length === 0;
  }

  input.addEventListener("change", function () {
    add(Array.from(input.files || []));
    input.value = "";
  });

  ["dragenter", "dragover"].forEach(function (type) {
    drop.addEventListener(type, function (e) { e.preventDefault(); drop.classList.add("dragging"); });
  });
  ["dragleave", "dragend"].forEach(function (type) {
    drop.addEventListener(type, function () { drop.classList.remove("dragging"); });
  });
  // A photo dropped anywhere on the page is analysed rather than opened by the browser.
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) {
    e.preventDefault();
    drop.classList.remove("dragging");
    if (e.dataTransfer && e.dataTransfer.files.length) add(Array.from(e.dataTransfer.files));
  });

  document.addEventListener("paste", function (e) {
    const data = e.clipboardData;
    if (!data) return;
    const files = Array.from(data.files || []).filter(function (f) { return f.type.startsWith("image/"); });
    if (files.length) {
      e.preventDefault();
      add(files);
    }
  });

  heatmap.addEventListener("change", function () {
    results.classList.toggle("show-heatmap", heatmap.checked);
    if (heatmap.checked) items.filter(function (it) { return !it.explained; }).forEach(enqueue);
  });
  classes.addEventListener("change", function () { items.forEach(enqueue); });

  clear.addEventListener("click", function () {
    for (const item of items) {
      URL.revokeObjectURL(item.url);
      item.article.remove();
    }
    items.length = 0;
    clear.hidden = true;
  });

  results.classList.toggle("show-heatmap", heatmap.checked);
})();
