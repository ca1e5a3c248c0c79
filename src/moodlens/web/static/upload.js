/* moodlens upload page: pick, drop or paste photos; each is sent to the API and its faces drawn on it. */
"use strict";
(function () {
  const M = window.Moodlens;
  const TABLE_FROM = 6; // this many photos or more: the compact table view, unless the visitor chose the cards
  const input = document.getElementById("file-input");
  const drop = document.getElementById("drop");
  const results = document.getElementById("results");
  const modelPick = document.getElementById("classes");
  const heatmap = document.getElementById("heatmap");
  const clear = document.getElementById("clear");
  const bar = document.getElementById("batch");
  const progress = document.getElementById("progress");
  const progressText = document.getElementById("progress-text");
  const announce = document.getElementById("announce");
  const viewCards = document.getElementById("view-cards");
  const viewTable = document.getElementById("view-table");
  const table = document.getElementById("photo-table");
  const tableBody = table.querySelector("tbody");
  const allJSON = document.getElementById("all-json");
  const allCSV = document.getElementById("all-csv");
  const note = document.getElementById("uncertain-note");
  const items = [];
  const batches = [];
  let queue = Promise.resolve();
  let chosenView = null; // "cards" or "table" once the visitor picks one

  function settled(item) {
    return !item.pending && (item.state === "done" || item.state === "error");
  }

  function setState(item, state) {
    item.state = state;
    item.article.dataset.state = state;
    item.row.dataset.state = state;
  }

  function card(file) {
    const name = file.name || "Pasted image";
    const article = M.el("article", "result");
    const stage = M.el("div", "stage");
    const img = M.el("img");
    img.alt = file.name || "pasted image";
    const url = URL.createObjectURL(file);
    img.src = url;
    const overlay = M.el("div", "overlay");
    stage.append(img, overlay);
    const summary = M.el("div", "summary");
    const title = M.el("h2", "filename", name);
    const status = M.el("p", "status", "Waiting…");
    const actions = M.el("div", "card-actions");
    actions.hidden = true;
    actions.setAttribute("role", "group");
    actions.setAttribute("aria-label", "Download the results of " + name);
    const asJSON = M.el("button", "secondary small dl-json", "JSON");
    const asCSV = M.el("button", "secondary small dl-csv", "CSV");
    const asImage = M.el("button", "secondary small dl-image", "Annotated image");
    [asJSON, asCSV, asImage].forEach(function (b) { b.type = "button"; });
    actions.append(M.el("span", "actions-label", "Download:"), asJSON, asCSV, asImage);
    const faces = M.el("ol", "faces");
    summary.append(title, status, actions, faces);
    article.append(stage, summary);

    const row = M.el("tr");
    const thumbCell = M.el("td", "row-thumb");
    const thumb = M.el("img");
    thumb.src = url;
    thumb.alt = "";
    thumbCell.append(thumb);
    const nameCell = M.el("td", "row-name");
    const open = M.el("button", "link", name);
    open.type = "button";
    open.setAttribute("aria-expanded", "false");
    nameCell.append(open);
    const countCell = M.el("td", "row-count num", "");
    const resultCell = M.el("td", "row-result", "Waiting…");
    row.append(thumbCell, nameCell, countCell, resultCell);

    // shown: whether the browser can show the picture (null until tried); when it cannot (TIFF, HEIC outside
    // Safari), the server's preview of it takes its place
    const item = { file, name, url, img, thumb, stage, asImage, article, overlay, status, actions, faces, row,
      countCell, resultCell, open, result: null, state: "queued", pending: 0, explained: false, shown: null };
    setState(item, "queued");
    asJSON.addEventListener("click", function () {
      M.downloadJSON(M.exportResult(item.name, item.result), M.stem(item.name) + ".moodlens.json");
    });
    asCSV.addEventListener("click", function () {
      M.downloadCSV([{ name: item.name, result: item.result }], M.stem(item.name) + ".moodlens.csv");
    });
    asImage.addEventListener("click", async function () {
      const jpeg = /jpe?g|heic|heif/i.test(item.file.type || item.name);
      const blob = await M.annotatedImage(item.img, item.result, jpeg ? "image/jpeg" : "image/png");
      if (blob) M.download(blob, M.stem(item.name) + ".moodlens." + (jpeg ? "jpg" : "png"));
    });
    open.addEventListener("click", function () {
      const show = !article.classList.contains("open");
      article.classList.toggle("open", show);
      open.setAttribute("aria-expanded", String(show));
      if (show) {
        M.layoutLabels(overlay);
        article.scrollIntoView({ block: "nearest" });
      }
    });
    M.linkFaces(overlay, faces);
    return item;
  }

  function show(item, res) {
    const result = res.body;
    item.result = result;
    setState(item, "done");
    item.explained = heatmap.checked;
    M.drawFaces(item.overlay, result);
    M.faceList(item.faces, result, { image: item.shown && item.img.complete ? item.img : null });
    M.relink(item.overlay);
    const n = result.faces.length;
    const text = M.summaryText(result);
    item.status.className = "status" + (n ? " summary-line" : " no-face");
    item.status.textContent = text;
    item.actions.hidden = false;
    item.countCell.textContent = String(n);
    item.resultCell.textContent = n ? text.replace(/^[^:]*: /, "") : "No face found.";
    if (result.faces.some(function (f) { return f.uncertain; }) || typeof result.uncertain_below === "number") {
      note.textContent = M.uncertainText(result.uncertain_below);
      note.hidden = false;
    }
  }

  /* Whether the browser can show this <img>: it has loaded, or it fails to. (Not img.decode(): Chromium
     sometimes rejects it for a picture it then shows.) */
  function showable(img) {
    return img.complete ? Promise.resolve(img.naturalWidth > 0) : loads(img);
  }

  /* Whether the next picture `img` gets loads (listen before setting its src: a new <img> is "complete"). */
  function loads(img) {
    return new Promise(function (resolve) {
      img.addEventListener("load", function () { resolve(img.naturalWidth > 0); }, { once: true });
      img.addEventListener("error", function () { resolve(false); }, { once: true });
    });
  }

  /* Show the server's preview (a JPEG data URL) instead of a file the browser could not show: a new <img>,
     listened to before its src is set, so its load is never missed. */
  async function usePreview(item, dataURL) {
    const bytes = Uint8Array.from(atob(dataURL.slice(dataURL.indexOf(",") + 1)), function (c) {
      return c.charCodeAt(0);
    });
    URL.revokeObjectURL(item.url);
    item.url = URL.createObjectURL(new Blob([bytes], { type: "image/jpeg" }));
    const img = M.el("img");
    img.alt = item.img.alt;
    const loaded = loads(img);
    img.src = item.url;
    item.thumb.src = item.url;
    item.img.replaceWith(img);
    item.img = img;
    item.shown = await loaded;
  }

  /* No picture to draw on: say so where it would be (the results, if any, are beside it). */
  function noPicture(item, text) {
    item.asImage.hidden = true;
    item.thumb.hidden = true;
    item.stage.replaceChildren(M.el("p", "status", text));
    item.stage.classList.add("no-preview");
  }

  function fail(item, text) {
    item.result = null;
    setState(item, "error");
    item.overlay.replaceChildren();
    item.faces.replaceChildren();
    item.actions.hidden = true;
    item.status.className = "status error";
    item.status.textContent = text;
    item.countCell.textContent = "";
    item.resultCell.textContent = text;
  }

  async function run(item) {
    item.pending--;
    if (!item.article.isConnected) return;
    setState(item, "busy");
    item.status.className = "status";
    item.status.textContent = "Analysing…";
    item.resultCell.textContent = "Analysing…";
    try {
      if (item.shown === null) item.shown = await showable(item.img);
      for (let attempt = 0; attempt < 5; attempt++) {
        let res;
        try {
          res = await M.analyze(item.file, { model: modelPick.value, explain: heatmap.checked,
            preview: !item.shown });
        } catch (e) {
          fail(item, "Could not reach the server (" + e.message + ").");
          return;
        }
        if (res.status === 429) {
          await new Promise(function (r) { setTimeout(r, 1000 * res.retryAfter); });
          continue;
        }
        if (res.ok) {
          const preview = res.body.preview;
          delete res.body.preview; // the downloads carry the results, not the picture
          if (!item.shown && preview) await usePreview(item, preview);
          if (!item.shown) noPicture(item, "Your browser cannot show this file; the results are beside it.");
          show(item, res);
        } else {
          if (!item.shown) noPicture(item, "Your browser cannot show this file.");
          fail(item, M.problemText(res.body, res.status));
        }
        return;
      }
      fail(item, "The server is busy; try again in a moment.");
    } finally {
      update();
    }
  }

  /* Progress ("12 of 40"), the view, and one polite message per batch once all of its photos are done. */
  function update() {
    const done = items.filter(settled).length; // "12 of 40"
    bar.hidden = items.length === 0;
    progress.max = Math.max(1, items.length);
    progress.value = done;
    progressText.textContent = done + " of " + items.length + (items.length === 1 ? " photo" : " photos") +
      " analysed";
    bar.classList.toggle("busy", done < items.length);
    const table_ = chosenView ? chosenView === "table" : items.length >= TABLE_FROM;
    results.classList.toggle("compact", table_);
    table.hidden = !table_;
    viewCards.parentElement.hidden = items.length < 2;
    viewTable.setAttribute("aria-pressed", String(table_));
    viewCards.setAttribute("aria-pressed", String(!table_));
    const ready = items.some(function (it) { return it.state === "done"; });
    allJSON.disabled = !ready;
    allCSV.disabled = !ready;
    clear.hidden = items.length === 0;
    for (const batch of batches) {
      if (batch.told || !batch.items.every(function (it) { return settled(it) || !it.article.isConnected; })) continue;
      batch.told = true;
      const live = batch.items.filter(function (it) { return it.article.isConnected; });
      if (live.length) announce.textContent = batchMessage(live);
    }
  }

  function batchMessage(batch) {
    const ok = batch.filter(function (it) { return it.state === "done"; });
    const faces = ok.reduce(function (s, it) { return s + it.result.faces.length; }, 0);
    const failed = batch.length - ok.length;
    let text = "Done: " + batch.length + (batch.length === 1 ? " photo" : " photos") + " analysed, " +
      (faces === 1 ? "1 face" : faces + " faces") + " found.";
    if (failed) text += " " + failed + (failed === 1 ? " photo" : " photos") + " could not be read.";
    return text;
  }

  function enqueue(item) {
    item.pending++;
    if (item.state === "busy") {
      queue = queue.then(function () { return run(item); });
      return;
    }
    setState(item, "queued");
    item.status.className = "status";
    item.status.textContent = "Waiting…";
    item.resultCell.textContent = "Waiting…";
    queue = queue.then(function () { return run(item); });
  }

  function startBatch(list) {
    if (!list.length) return;
    batches.push({ items: list, told: false });
    list.forEach(enqueue);
    update();
  }

  function add(files) {
    const cards = document.createDocumentFragment(); // newest batch on top, in the order picked
    const rows = document.createDocumentFragment();
    const batch = [];
    for (const file of files) {
      const item = card(file);
      items.push(item);
      batch.push(item);
      cards.append(item.article);
      rows.append(item.row);
    }
    results.prepend(cards);
    tableBody.prepend(rows);
    startBatch(batch);
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
    if (heatmap.checked) startBatch(items.filter(function (it) { return !it.explained; }));
  });
  modelPick.addEventListener("change", function () { startBatch(items.slice()); });

  viewCards.addEventListener("click", function () { chosenView = "cards"; update(); });
  viewTable.addEventListener("click", function () { chosenView = "table"; update(); });

  function finished() {
    return items.filter(function (it) { return it.state === "done"; })
      .map(function (it) { return { name: it.name, result: it.result }; });
  }
  allJSON.addEventListener("click", function () {
    const photos = items.map(function (it) {
      return it.state === "done" ? M.exportResult(it.name, it.result)
        : { file: it.name, error: it.state === "error" ? it.status.textContent : "not analysed yet" };
    });
    M.downloadJSON({ photos: photos }, "moodlens-results.json");
  });
  allCSV.addEventListener("click", function () { M.downloadCSV(finished(), "moodlens-results.csv"); });

  clear.addEventListener("click", function () {
    for (const item of items) {
      URL.revokeObjectURL(item.url);
      item.article.remove();
      item.row.remove();
    }
    items.length = 0;
    batches.length = 0;
    chosenView = null;
    note.hidden = true;
    announce.textContent = "";
    update();
  });

  results.classList.toggle("show-heatmap", heatmap.checked);
})();
