// The page's few moves: pick or drop a photo -> POST /v1/caption and /v1/explain; ask -> POST /v1/vqa.
// The heat maps are drawn here, over the image's centre square (what the model sees after its resize and crop).
"use strict";

const $ = (id) => document.getElementById(id);
let photo = null; // the File being looked at
let picture = null; // its decoded <img>, for the heat maps

async function post(path, fields) {
  const form = new FormData();
  form.append("image", photo, photo.name || "photo");
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  const r = await fetch(path, { method: "POST", body: form });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function options() {
  return { max_new_tokens: $("max_new_tokens").value, num_beams: $("num_beams").value };
}

function fail(e) {
  $("error").textContent = String(e.message || e);
}

async function show(file) {
  photo = file;
  $("error").textContent = "";
  $("answers").innerHTML = "";
  $("main").classList.add("shown");
  $("caption").textContent = "…";
  $("caption").dataset.state = "busy";
  $("score").textContent = "";
  $("words").innerHTML = "";
  $("words").dataset.state = "busy";
  const url = URL.createObjectURL(file);
  $("preview").src = url;
  picture = new Image();
  picture.src = url;
  await Promise.all([caption(), explain()]);
}

async function caption() {
  try {
    const rec = (await post("/v1/caption", options())).results[0];
    if (rec.error) throw new Error(rec.error);
    $("caption").textContent = rec.text;
    $("caption").dataset.ids = JSON.stringify(rec.ids);
    $("score").textContent = `mean log-probability per token ${rec.score.toFixed(4)}`;
    $("caption").dataset.state = "done";
  } catch (e) {
    $("caption").textContent = "";
    $("caption").dataset.state = "error";
    fail(e);
  }
}

async function ask(event) {
  event.preventDefault();
  const q = $("question").value;
  if (!photo || !q.trim()) return;
  const li = document.createElement("li");
  li.innerHTML = '<span class="q"></span> <b>…</b>';
  li.querySelector(".q").textContent = q;
  $("answers").appendChild(li);
  try {
    const rec = (await post("/v1/vqa", { ...options(), question: q })).results[0];
    li.querySelector("b").textContent = rec.error ? `(${rec.error})` : rec.text;
  } catch (e) {
    li.querySelector("b").textContent = `(${e.message})`;
  }
}

async function explain() {
  let words;
  try {
    words = (await post("/v1/explain", { max_new_tokens: $("max_new_tokens").value })).words;
  } catch (e) {
    $("words").textContent = `(${e.message})`; // say why (an ONNX export has no maps); the rest still works
    $("words").dataset.state = "error";
    return;
  }
  await picture.decode().catch(() => {});
  for (const w of words) $("words").appendChild(heatmap(w));
  $("words").dataset.state = "done";
}

// One word: the image's centre square, dimmed, its patches lit by the word's attention (scaled to its peak).
function heatmap(word, size = 128) {
  const fig = document.createElement("figure");
  const c = document.createElement("canvas");
  c.width = c.height = size;
  const g = c.getContext("2d");
  const side = Math.min(picture.naturalWidth, picture.naturalHeight);
  g.drawImage(picture, (picture.naturalWidth - side) / 2, (picture.naturalHeight - side) / 2, side, side,
              0, 0, size, size);
  g.fillStyle = "rgba(0, 0, 0, 0.55)"; // dim the image, so the bright patches stand out
  g.fillRect(0, 0, size, size);
  const rows = word.map, h = rows.length, w = rows[0].length;
  const peak = Math.max(...rows.flat()) || 1;
  for (let i = 0; i < h; i++)
    for (let j = 0; j < w; j++) {
      g.fillStyle = `rgba(255, 225, 0, ${(0.8 * rows[i][j]) / peak})`; // yellow: apart from any shape's colour
      g.fillRect((j * size) / w, (i * size) / h, size / w, size / h);
    }
  const label = document.createElement("figcaption");
  label.textContent = word.token;
  fig.append(c, label);
  return fig;
}

$("file").addEventListener("change", (e) => e.target.files[0] && show(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) show(e.dataTransfer.files[0]);
});
$("ask").addEventListener("submit", ask);
fetch("/health").then((r) => r.json()).then((h) => {
  $("model").textContent = `checkpoint ${h.checkpoint} · batches of up to ${h.max_batch} rows`;
}).catch(() => {});
