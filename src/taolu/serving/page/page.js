// taolu serve's page: sends the images the user drops, picks or pastes to POST predict and
// shows each one with its top-k classes. Everything from the server or the user (file names,
// class names, messages) is written with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let maxFiles = 64;
// What /info says the model offers: overlays (?explain=1), a stored "unknown" threshold.
let explainable = false;
let unknownBelow = null;

function fact(name, value) {
  const row = document.createElement("div");
  const term = document.createElement("dt");
  const detail = document.createElement("dd");
  term.textContent = name;
  detail.textContent = value;
  row.append(term, detail);
  return row;
}

function percent(value) {
  return (100 * value).toFixed(value >= 0.9995 || value < 0.0005 ? 1 : 2) + "%";
}

async function showInfo() {
  const response = await fetch("info");
  const info = await response.json();
  document.title = `taolu serve: ${info.name}`;
  $("run-name").textContent = info.name;
  const facts = $("run-facts");
  const accuracy = info.metrics && info.metrics.val_acc;
  facts.append(
    fact("validation accuracy", accuracy === undefined ? "not recorded" : percent(accuracy)),
    fact("model", info.model || "(your own nn.Module)"),
    fact("epoch", info.epoch ?? "?"),
    fact("from", info.source),
    fact("input", `${info.preprocessing.channels}×${info.preprocessing.size.join("×")}`),
  );
  $("run-classes").textContent = `${info.classes.length} classes: ${info.classes.join(", ")}`;
  maxFiles = info.limits.max_files;
  const explanation = info.explanation || {};
  explainable = explanation.class_activation === true;
  unknownBelow = typeof explanation.unknown_threshold === "number" ? explanation.unknown_threshold : null;
  $("explain-choice").hidden = !explainable;
}

function predictUrl() {
  const query = new URLSearchParams();
  if (unknownBelow !== null) query.set("reject_below", "auto");
  if (explainable && $("explain").checked) query.set("explain", "1");
  const text = query.toString();
  return text ? `predict?${text}` : "predict";
}

function card(file) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  const preview = node.querySelector(".preview");
  preview.src = URL.createObjectURL(file);
  preview.alt = file.name;
  node.querySelector(".path").textContent = file.name;
  return node;
}

function fill(node, result) {
  node.dataset.path = result.path;
  if (result.error !== undefined) {
    const error = node.querySelector(".error");
    error.textContent = result.error;
    error.hidden = false;
    node.classList.add("failed");
    return;
  }
  if (result.answer === "unknown") {
    const verdict = node.querySelector(".explanation");
    verdict.textContent = `unknown: less sure than ${percent(unknownBelow ?? 0)}, the run's threshold`;
    verdict.hidden = false;
    node.classList.add("unknown");
  }
  // Only a PNG data URL is shown: nothing else the server sends becomes a URL.
  if (typeof result.explanation === "string" && result.explanation.startsWith("data:image/png;base64,")) {
    const overlay = node.querySelector(".overlay");
    overlay.src = result.explanation;
    overlay.alt = `where the model looked for ${result.predictions[0].class}`;
    overlay.hidden = false;
  }
  const list = node.querySelector(".predictions");
  for (const prediction of result.predictions) {
    const row = document.createElement("li");
    const name = document.createElement("span");
    const bar = document.createElement("span");
    const fillBar = document.createElement("span");
    const probability = document.createElement("span");
    name.className = "class-name";
    name.textContent = prediction.class;
    name.title = prediction.class;
    bar.className = "bar";
    fillBar.style.width = `${(100 * prediction.probability).toFixed(2)}%`;
    bar.append(fillBar);
    probability.className = "probability";
    probability.textContent = percent(prediction.probability);
    row.dataset.probability = String(prediction.probability);
    row.append(name, bar, probability);
    list.append(row);
  }
}

function failAll(nodes, message) {
  for (const node of nodes) fill(node, { path: "", error: message });
}

async function classify(files) {
  const status = $("status");
  status.classList.remove("bad");
  const images = files.filter((file) => file.size > 0);
  if (!images.length) return;
  const nodes = images.map(card);
  $("results").prepend(...nodes);
  status.textContent = `classifying ${images.length} image${images.length > 1 ? "s" : ""}…`;
  for (let start = 0; start < images.length; start += maxFiles) {
    const chunk = images.slice(start, start + maxFiles);
    const chunkNodes = nodes.slice(start, start + maxFiles);
    const form = new FormData();
    for (const file of chunk) form.append("files", file, file.name);
    try {
      const response = await fetch(predictUrl(), { method: "POST", body: form });
      const answer = await response.json();
      if (Array.isArray(answer)) {
        answer.forEach((result, index) => fill(chunkNodes[index], result));
      } else {
        failAll(chunkNodes, answer.error || `the server answered ${response.status}`);
      }
    } catch (error) {
      failAll(chunkNodes, `no answer from the server: ${error.message}`);
    }
  }
  const failed = nodes.filter((node) => node.classList.contains("failed")).length;
  status.textContent = failed
    ? `${failed} of ${images.length} could not be classified`
    : `classified ${images.length} image${images.length > 1 ? "s" : ""}`;
  status.classList.toggle("bad", failed > 0);
}

function wire() {
  const drop = $("drop");
  const pick = $("pick");
  pick.addEventListener("change", () => {
    classify(Array.from(pick.files));
    pick.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify(Array.from(event.dataTransfer.files));
  });
  document.addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData.items)
      .filter((item) => item.kind === "file")
      .map((item) => item.getAsFile())
      .filter(Boolean);
    if (files.length) classify(files);
  });
}

wire();
showInfo().catch((error) => {
  $("status").textContent = `cannot read /info: ${error.message}`;
  $("status").classList.add("bad");
});
