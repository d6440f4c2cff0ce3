// The page's behaviour: list the served runs, send a chosen image to /api/predict, show results.
// Everything comes from this server; text from the server is inserted with textContent only.
"use strict";

const TOP_K = 5;
const byId = (id) => document.getElementById(id);
let runs = [];

function percent(value) {
  return value === undefined || value === null ? "—" : `${(100 * value).toFixed(1)}%`;
}

// Each cell carries its column's heading: a phone shows the rows as cards of "heading: value".
function cell(row, content) {
  const td = row.insertCell();
  td.dataset.label = row.closest("table").tHead.rows[0].cells[td.cellIndex].textContent;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

function noneText(text) {
  const span = document.createElement("span");
  span.className = "none";
  span.textContent = text;
  return span;
}

async function loadRuns() {
  const response = await fetch("/api/runs");
  runs = await response.json();
  const select = byId("run-select");
  const body = byId("runs").tBodies[0];
  for (const run of runs) {
    select.add(new Option(run.name, run.name));
    const row = body.insertRow();
    // Two folders named alike are served as "baseline" and "baseline-2": the source tells them
    // apart.
    const name = document.createElement("span");
    const source = document.createElement("small");
    source.className = "source";
    source.textContent = run.source;
    name.append(run.name, document.createElement("br"), source);
    cell(row, name);
    cell(row, run.experiment ?? "—");
    for (const split of ["train", "val", "test"]) cell(row, percent(run.accuracy[split]));
    const verdict = run.damaged ? noneText(`damaged: ${run.damaged}`) : noneText("not diagnosed");
    cell(row, run.verdict ? run.verdict : verdict);
    if (run.curves_url) {
      const image = document.createElement("img");
      image.src = run.curves_url;
      image.alt = `Learning curves of ${run.name}`;
      const link = document.createElement("a");
      link.href = run.curves_url;
      link.append(image);
      cell(row, link);
    } else {
      cell(row, noneText("no curves.png"));
    }
  }
}

function showError(message) {
  const error = byId("error");
  error.textContent = message;
  error.hidden = !message;
}

// The image on show and the request that classifies it. A result is shown only when it answers
// the latest request, so what the page shows always belongs to the current image and run.
let currentFile = null;
let latestRequest = 0;

function clearResult() {
  byId("result").hidden = true;
  const preview = byId("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  byId("heatmap").removeAttribute("src");
}

async function classify(file) {
  const request = ++latestRequest;
  const run = runs.find((candidate) => candidate.name === byId("run-select").value);
  if (file !== currentFile) clearResult(); // The old image's result does not describe this one.
  currentFile = file;
  byId("result").setAttribute("aria-busy", "true");
  showError("");
  byId("status").textContent = `Classifying ${file.name}${run ? ` with ${run.name}` : ""}…`;
  const form = new FormData();
  form.append("image", file);
  if (run) {
    form.append("run", run.name);
    form.append("top_k", String(Math.min(TOP_K, run.class_names.length)));
  }
  let result = null;
  let problem = null;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    result = await response.json();
    if (!response.ok) problem = result.detail || `The server answered ${response.status}.`;
  } catch (error) {
    problem = error.message;
  }
  if (request !== latestRequest) return; // A newer image or run was chosen meanwhile.
  byId("status").textContent = "";
  byId("result").removeAttribute("aria-busy");
  if (problem !== null) {
    // The previous image and prediction do not belong to this file: they go with it.
    currentFile = null;
    clearResult();
    showError(`Could not classify ${file.name}: ${problem}`);
    return;
  }
  const preview = byId("preview");
  if (!preview.src) preview.src = URL.createObjectURL(file);
  showResult(result, file);
}

function showResult(result, file) {
  const best = result.predictions[0];
  byId("predicted-class").textContent = best.class_name;
  byId("predicted-probability").textContent = `(${percent(best.probability)})`;
  byId("result-run").textContent = result.run;
  byId("result-file").textContent = file.name;
  showConfidence(best.probability, runs.find((run) => run.name === result.run));
  byId("explained-class").textContent = result.explained_class;
  // An ONNX export has no gradients for Grad-CAM: its figure is hidden rather than empty.
  byId("heatmap-figure").hidden = result.heatmap_png === null;
  if (result.heatmap_png !== null) byId("heatmap").src = `data:image/png;base64,${result.heatmap_png}`;
  const bars = byId("bars");
  bars.replaceChildren();
  for (const { class_name, probability } of result.predictions) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = class_name;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "percent";
    value.textContent = percent(probability);
    item.append(name, bar, value);
    bars.append(item);
  }
  byId("result").hidden = false;
}

// Below twice chance (1 / number of classes) the top class is little better than a guess.
function showConfidence(probability, run) {
  const note = byId("low-confidence");
  const chance = run ? 1 / run.class_names.length : null;
  note.hidden = chance === null || probability >= 2 * chance;
  note.textContent = note.hidden
    ? ""
    : `Low confidence: chance is ${Number((100 * chance).toFixed(1))}%.`;
}

function setUpInputs() {
  const zone = byId("drop-zone");
  const input = byId("file-input");
  input.addEventListener("change", () => {
    if (input.files[0]) classify(input.files[0]);
    input.value = ""; // Choosing the same file again, after a fix or a failure, sends it again.
  });
  // A new run classifies the image on show again, so the result always names the chosen run.
  byId("run-select").addEventListener("change", () => currentFile && classify(currentFile));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) classify(file);
  });
}

setUpInputs();
loadRuns().catch((error) => showError(`Could not list the runs: ${error}`));
