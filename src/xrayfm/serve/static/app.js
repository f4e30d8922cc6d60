// xrayfm web page: upload a radiograph, show findings, heatmap, masks and boxes. No external code.
"use strict";
const $ = (id) => document.getElementById(id);
// layers: the overlay layers of the shown image ("heatmap", "mask:CLASS", "boxes"); off: those the user switched off
// (kept from image to image); plain: every layer hidden, the choices kept for the next click
const state = {
  auth: false, health: null, file: null, heat: null, masks: [], boxes: [], scale: 1,
  layers: [], off: new Set(), plain: false, timings: [],
};
const MASK_COLOURS = [[60, 200, 75], [70, 130, 230], [240, 50, 230], [255, 200, 0]];
const BOX_COLOUR = [235, 50, 50];
const MAX_CANVAS_SIDE = 2048; // larger images are drawn scaled down: a 10,000 px canvas would hold 400 MB
const PICKERS = { segmentation: "segment", detection: "detect" }; // kind -> endpoint whose head can be picked

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModel() {
  const health = await (await fetch("/health")).json();
  state.health = health;
  state.auth = !("model" in health) || health.auth_required; // with a token set, /health says only "ok"
  $("token-row").hidden = !state.auth;
  $("model-name").textContent = health.model || "enter the API token to see the model";
  if (health.tasks) fillPickers(Object.entries(health.tasks).map(([name, kind]) => ({ name, kind })));
  if (!state.auth) {
    showCard(await (await fetch("/model")).json());
  }
}

function showCard(card) {
  const tasks = card.tasks.map((t) => `${t.name} (${t.kind})`).join(", ");
  $("model-name").textContent = `${card.architecture} · ${tasks}`;
  state.card = card;
  $("min-score-row").hidden = !card.tasks.some((t) => t.kind === "detection");
  if (!(state.health && state.health.tasks)) fillPickers(card.tasks); // with a token, /health lists no tasks
}

// A model with several segmentation or detection heads (Foundation X) lets the user pick the one to call.
function fillPickers(tasks) {
  for (const [kind, endpoint] of Object.entries(PICKERS)) {
    const names = tasks.filter((t) => t.kind === kind).map((t) => t.name);
    $(endpoint + "-task").replaceChildren(...names.map((name) => new Option(name, name)));
    $(endpoint + "-pick").hidden = names.length < 2;
  }
}

function picked(endpoint) { // query parameters of /segment or /detect: the chosen head when there is a choice
  return $(endpoint + "-pick").hidden ? {} : { task: $(endpoint + "-task").value };
}

function jet(v) { // 0..1 -> [r, g, b] of the jet colour map, whole numbers: the legend's bar shows the same colours
  const c = (x) => Math.max(0, Math.min(1, x));
  const rgb = [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
  return rgb.map((x) => Math.round(x * 255));
}

// A map (heatmap, mask) covers the image at 1/downscale: each map pixel is downscale x downscale image
// pixels, the last row and column clipped. Drawn over the displayed image (its size times state.scale).
async function mapToImageData(b64, image) {
  const img = new Image();
  img.src = "data:image/png;base64," + b64;
  await img.decode();
  const canvas = document.createElement("canvas");
  const width = $("overlay-canvas").width, height = $("overlay-canvas").height;
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  const k = image.downscale * state.scale;
  ctx.drawImage(img, 0, 0, img.naturalWidth * k, img.naturalHeight * k);
  return ctx.getImageData(0, 0, width, height);
}

function shownLayers() {
  return state.plain ? [] : state.layers.filter((name) => !state.off.has(name));
}

// The layers switched on, drawn in order (heatmap, masks, boxes); the canvas names them for screen readers.
function drawOverlay() {
  const canvas = $("overlay-canvas");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const shown = shownLayers();
  canvas.dataset.layers = shown.join(" ");
  canvas.setAttribute("aria-label", shown.length ? "overlay: " + shown.join(", ") : "plain image, no overlay");
  $("plain").setAttribute("aria-pressed", String(state.plain));
  $("heat-legend").hidden = !shown.includes("heatmap");
  const alpha = parseFloat($("opacity").value);
  const out = ctx.createImageData(canvas.width, canvas.height);
  let painted = false;
  if (state.heat && shown.includes("heatmap")) {
    for (let i = 0; i < state.heat.data.length; i += 4) {
      const v = state.heat.data[i] / 255;
      const [r, g, b] = jet(v);
      out.data[i] = r; out.data[i + 1] = g; out.data[i + 2] = b; out.data[i + 3] = alpha * 255;
    }
    painted = true;
  }
  state.masks.forEach((m, k) => {
    if (!shown.includes("mask:" + m.name)) return;
    const [r, g, b] = MASK_COLOURS[k % MASK_COLOURS.length];
    for (let i = 0; i < m.image.data.length; i += 4) {
      if (m.image.data[i] > 127) {
        out.data[i] = r; out.data[i + 1] = g; out.data[i + 2] = b; out.data[i + 3] = alpha * 255;
      }
    }
    painted = true;
  });
  if (painted) ctx.putImageData(out, 0, 0);
  ctx.lineWidth = Math.max(2, canvas.width / 300);
  ctx.font = `${Math.max(12, canvas.width / 50)}px sans-serif`;
  for (const b of shown.includes("boxes") ? state.boxes : []) {
    const [x0, y0, x1, y1] = b.box.map((v) => v * state.scale);
    ctx.strokeStyle = ctx.fillStyle = `rgb(${BOX_COLOUR.join(", ")})`;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillText(`${b.class} ${b.score.toFixed(2)}`, x0 + 3, y0 - 4);
  }
}

// One list of findings, or with several classification heads (`heads`) one list per head under its name.
function showFindings(result) {
  const list = $("findings");
  list.innerHTML = "";
  if (!result.heads) {
    appendFindings(list, result);
    return;
  }
  for (const [name, found] of Object.entries(result.heads)) {
    const group = document.createElement("li");
    group.className = "head";
    group.dataset.head = name;
    const title = document.createElement("h3");
    title.textContent = `${name} (${found.kind})`;
    const inner = document.createElement("ol");
    appendFindings(inner, found);
    group.append(title, inner);
    list.appendChild(group);
  }
}

function appendFindings(list, result) {
  const entries = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of entries) {
    const li = document.createElement("li");
    const positive = result.positive.includes(name);
    li.className = "finding";
    li.dataset.class = name;
    li.innerHTML = `<span class="name"></span> <b>${(100 * p).toFixed(1)}%</b>` +
      `<div class="bar${positive ? " positive" : ""}"><div style="width:${(100 * p).toFixed(1)}%"></div></div>`;
    li.querySelector(".name").textContent = name + (positive ? " (above threshold)" : "");
    list.appendChild(li);
  }
}

async function post(endpoint, file, params) {
  const body = new FormData();
  body.append("file", file);
  const url = endpoint + "?" + new URLSearchParams(params).toString();
  const started = performance.now();
  const response = await fetch(url, { method: "POST", body, headers: headers() });
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(`${response.status}: ${data.detail}`);
  state.timings.push({ endpoint, roundTrip: performance.now() - started, server: data.server_ms });
  return data;
}

// How long the answers took: measured here from sending to the last byte (round trip), and the server's own
// figure (server_ms: from the upload's arrival to its answer) when it gives one.
function showTiming() {
  const sum = (key) => state.timings.reduce((total, t) => total + t[key], 0);
  const roundTrip = Math.round(sum("roundTrip"));
  const parts = state.timings.map((t) => `${t.endpoint} ${Math.round(t.roundTrip)} ms`).join(", ");
  let text = `answered in ${roundTrip} ms (round trip: ${parts})`;
  if (state.timings.every((t) => typeof t.server === "number")) text += `; server ${Math.round(sum("server"))} ms`;
  $("timing").textContent = text;
}

// One switch per layer of this image, with the colour it is drawn in.
function showLayers(heatmap, maskClasses, hasBoxes) {
  const swatch = ([r, g, b]) => `<span class="swatch" style="background:rgb(${r},${g},${b})"></span>`;
  const layers = [];
  if (heatmap) layers.push(["heatmap", "heatmap", '<span class="swatch jet"></span>']);
  maskClasses.forEach((c, k) => layers.push(["mask:" + c, c, swatch(MASK_COLOURS[k % MASK_COLOURS.length])]));
  if (hasBoxes) layers.push(["boxes", "boxes", swatch(BOX_COLOUR)]);
  state.layers = layers.map(([name]) => name);
  $("layer-list").replaceChildren(...layers.map(([name, text, mark]) => {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" data-layer="">${mark}<span></span>`;
    const box = label.querySelector("input");
    box.dataset.layer = name;
    box.checked = !state.off.has(name);
    label.querySelector("span:last-child").textContent = text;
    box.addEventListener("change", () => {
      if (box.checked) state.off.delete(name); else state.off.add(name);
      state.plain = false; // a layer switched on or off shows the layers again
      drawOverlay();
    });
    return label;
  }));
  $("layers").hidden = layers.length === 0;
}

function togglePlain() {
  state.plain = !state.plain;
  drawOverlay();
}

function drawHeatBar() { // the colour bar of the heatmap legend, drawn by the same colour map as the heatmap
  const canvas = $("heat-bar");
  const ctx = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    ctx.fillStyle = `rgb(${jet(x / (canvas.width - 1)).join(", ")})`;
    ctx.fillRect(x, 0, 1, canvas.height);
  }
}

async function analyse(file) {
  setStatus("reading " + file.name + "…");
  state.file = file;
  state.heat = null; state.masks = []; state.boxes = []; state.timings = [];
  $("findings").innerHTML = ""; $("extras").innerHTML = ""; $("timing").textContent = "";
  $("file-name").textContent = file.name;
  if (!state.card) {
    const response = await fetch("/model", { headers: headers() });
    if (response.ok) showCard(await response.json());
  }
  const kinds = new Set((state.card ? state.card.tasks : []).map((t) => t.kind));
  try {
    let image = null, heatmap = null, seg = null;
    if (kinds.size === 0 || kinds.has("multilabel") || kinds.has("multiclass")) {
      const result = await post("/predict", file, { heatmap: $("want-heatmap").checked, threshold: $("threshold").value });
      image = result.image;
      showFindings(result);
      heatmap = result.heatmap;
    }
    if (kinds.has("segmentation")) {
      seg = await post("/segment", file, picked("segment"));
      image = seg.image;
      const legend = document.createElement("p");
      legend.className = "legend";
      if (!$("segment-pick").hidden) legend.append(seg.task + ": ");
      seg.classes.forEach((c, k) => {
        const [r, g, b] = MASK_COLOURS[k % MASK_COLOURS.length];
        legend.innerHTML += `<span style="background:rgb(${r},${g},${b})"></span>${c} ` +
          `(${(100 * seg.area_fraction[c]).toFixed(1)}% of the image) `;
      });
      $("extras").appendChild(legend);
    }
    if (kinds.has("detection")) {
      const minScore = $("min-score").value.trim(); // empty: the server's default
      const det = await post("/detect", file, { ...picked("detect"), ...(minScore ? { min_score: minScore } : {}) });
      image = det.image;
      state.boxes = det.boxes;
      const p = document.createElement("p");
      p.textContent = ($("detect-pick").hidden ? "" : det.task + ": ") +
        `${det.boxes.length} box(es) with score ≥ ${det.min_score}`;
      $("extras").appendChild(p);
    }
    showTiming();
    await showImage(file, image.width, image.height);
    if (heatmap) {
      state.heat = await mapToImageData(heatmap.png, image);
      $("heat-what").textContent = `${heatmap.method} for “${heatmap.class}”, scaled to this image: ` +
        "0 is its weakest response, 1 its strongest";
    }
    for (const c of seg ? seg.classes : []) {
      state.masks.push({ name: c, image: await mapToImageData(seg.masks[c], image) });
    }
    showLayers(Boolean(heatmap), seg ? seg.classes : [], kinds.has("detection"));
    drawOverlay();
    setStatus("done: " + file.name);
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function showImage(file, imageWidth, imageHeight) {
  // browsers cannot draw DICOM: the server's image size is used and the image is drawn when possible
  state.scale = Math.min(1, MAX_CANVAS_SIDE / Math.max(imageWidth, imageHeight));
  const width = Math.round(imageWidth * state.scale), height = Math.round(imageHeight * state.scale);
  const canvas = $("image-canvas"), overlay = $("overlay-canvas");
  canvas.width = overlay.width = width; canvas.height = overlay.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, width, height);
  try {
    const bitmap = await createImageBitmap(file);
    ctx.drawImage(bitmap, 0, 0, width, height);
  } catch (e) {
    ctx.fillStyle = "#aaa"; ctx.font = "16px sans-serif";
    ctx.fillText("(image preview not available for this format)", 10, 24);
  }
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => e.target.files[0] && analyse(e.target.files[0]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("hover"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("hover"); }));
  drop.addEventListener("drop", (e) => e.dataTransfer.files[0] && analyse(e.dataTransfer.files[0]));
  $("opacity").addEventListener("input", drawOverlay);
  $("plain").addEventListener("click", togglePlain);
  document.addEventListener("keydown", (e) => { // P: the plain image, unless typing in a field
    const typing = e.target.matches("input:not([type=checkbox]):not([type=range]), select, textarea");
    if (e.key.toLowerCase() === "p" && !e.ctrlKey && !e.metaKey && !e.altKey && !typing) togglePlain();
  });
  drawHeatBar();
  for (const endpoint of Object.values(PICKERS)) { // another head: the same image again
    $(endpoint + "-task").addEventListener("change", () => state.file && analyse(state.file));
  }
  loadModel().catch((err) => setStatus("cannot reach the model: " + err.message, true));
}
init();
