// xrayfm web page: upload a radiograph, show findings, heatmap, masks and boxes. No external code.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { auth: false, health: null, imageBitmap: null, heat: null, masks: [], boxes: [] };
const MASK_COLOURS = [[60, 200, 75], [70, 130, 230], [240, 50, 230], [255, 200, 0]];

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
  state.auth = health.auth_required;
  $("token-row").hidden = !state.auth;
  $("model-name").textContent = health.model;
  if (!state.auth) {
    const card = await (await fetch("/model")).json();
    const tasks = card.tasks.map((t) => `${t.name} (${t.kind})`).join(", ");
    $("model-name").textContent = `${card.architecture} · ${tasks}`;
    state.card = card;
  }
}

function jet(v) { // 0..1 -> [r, g, b] of the jet colour map
  const c = (x) => Math.max(0, Math.min(1, x));
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))].map((x) => x * 255);
}

async function pngToImageData(b64, width, height) {
  const img = new Image();
  img.src = "data:image/png;base64," + b64;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height);
}

function drawOverlay() {
  const canvas = $("overlay-canvas");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const alpha = parseFloat($("opacity").value);
  const out = ctx.createImageData(canvas.width, canvas.height);
  let painted = false;
  if (state.heat) {
    for (let i = 0; i < state.heat.data.length; i += 4) {
      const v = state.heat.data[i] / 255;
      const [r, g, b] = jet(v);
      out.data[i] = r; out.data[i + 1] = g; out.data[i + 2] = b; out.data[i + 3] = alpha * 255;
    }
    painted = true;
  }
  state.masks.forEach((m, k) => {
    const [r, g, b] = MASK_COLOURS[k % MASK_COLOURS.length];
    for (let i = 0; i < m.data.length; i += 4) {
      if (m.data[i] > 127) {
        out.data[i] = r; out.data[i + 1] = g; out.data[i + 2] = b; out.data[i + 3] = alpha * 255;
      }
    }
    painted = true;
  });
  if (painted) ctx.putImageData(out, 0, 0);
  ctx.lineWidth = Math.max(2, canvas.width / 300);
  ctx.font = `${Math.max(12, canvas.width / 50)}px sans-serif`;
  for (const b of state.boxes) {
    ctx.strokeStyle = ctx.fillStyle = "rgb(235, 50, 50)";
    ctx.strokeRect(b.box[0], b.box[1], b.box[2] - b.box[0], b.box[3] - b.box[1]);
    ctx.fillText(`${b.class} ${b.score.toFixed(2)}`, b.box[0] + 3, b.box[1] - 4);
  }
}

function showFindings(result) {
  const list = $("findings");
  list.innerHTML = "";
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
  const response = await fetch(url, { method: "POST", body, headers: headers() });
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(`${response.status}: ${data.detail}`);
  return data;
}

async function analyse(file) {
  setStatus("reading " + file.name + "…");
  state.heat = null; state.masks = []; state.boxes = [];
  $("findings").innerHTML = ""; $("extras").innerHTML = "";
  if (!state.card) {
    const response = await fetch("/model", { headers: headers() });
    if (response.ok) state.card = await response.json();
  }
  const kinds = new Set((state.card ? state.card.tasks : []).map((t) => t.kind));
  try {
    let width = 0, height = 0;
    if (kinds.size === 0 || kinds.has("multilabel") || kinds.has("multiclass")) {
      const result = await post("/predict", file, { heatmap: $("want-heatmap").checked, threshold: $("threshold").value });
      ({ width, height } = result.image);
      showFindings(result);
      if (result.heatmap) state.heat = await pngToImageData(result.heatmap.png, width, height);
    }
    if (kinds.has("segmentation")) {
      const seg = await post("/segment", file, {});
      ({ width, height } = seg.image);
      const legend = document.createElement("p");
      legend.className = "legend";
      seg.classes.forEach((c, k) => {
        const [r, g, b] = MASK_COLOURS[k % MASK_COLOURS.length];
        legend.innerHTML += `<span style="background:rgb(${r},${g},${b})"></span>${c} ` +
          `(${(100 * seg.area_fraction[c]).toFixed(1)}% of the image) `;
      });
      $("extras").appendChild(legend);
      for (const c of seg.classes) state.masks.push(await pngToImageData(seg.masks[c], width, height));
    }
    if (kinds.has("detection")) {
      const det = await post("/detect", file, {});
      ({ width, height } = det.image);
      state.boxes = det.boxes;
      const p = document.createElement("p");
      p.textContent = `${det.boxes.length} box(es) with score ≥ ${det.min_score}`;
      $("extras").appendChild(p);
    }
    await showImage(file, width, height);
    drawOverlay();
    setStatus("done: " + file.name);
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function showImage(file, width, height) {
  // browsers cannot draw DICOM: the server's decoded size is used and the image is drawn when possible
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
  loadModel().catch((err) => setStatus("cannot reach the model: " + err.message, true));
}
init();
