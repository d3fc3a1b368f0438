// The Sluice console: polls /api/console once a second and draws the tabs. Every text
// from the host (plugin paths, reasons, log messages) goes in as text, never as HTML.
"use strict";

const TOKEN_KEY = "sluice-admin-token";
const TABS = ["overview", "partitions", "checkpoints", "plugin", "exceptions", "configuration"];
let current = "overview";
let configLoaded = false;
let last = null;

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child instanceof Node) node.append(child);
    else node.append(child === undefined || child === null ? "" : String(child));
  }
  return node;
}

function count(n) {
  return n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US");
}

function rate(n) {
  if (n === null || n === undefined) return "–";
  return n >= 100 ? count(n) : n.toFixed(1);
}

function ms(n) {
  if (n === null || n === undefined) return "–";
  return n >= 1000 ? (n / 1000).toFixed(2) + " s" : n.toFixed(1) + " ms";
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

function duration(msTotal) {
  let s = Math.floor(msTotal / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + (d || h || m ? m + "m " : "") + s + "s";
}

function time(atMs) {
  return new Date(atMs).toISOString().replace("T", " ").replace("Z", "");
}

function setText(id, text, value) {
  const node = $(id);
  node.textContent = text;
  if (value !== undefined) node.dataset.value = value === null ? "" : String(value);
}

function replaceRows(id, rows) {
  const body = $(id);
  body.replaceChildren(...rows);
}

function show(tab) {
  if (!TABS.includes(tab)) tab = "overview";
  current = tab;
  for (const name of TABS) {
    $("tab-" + name).classList.toggle("active", name === tab);
  }
  for (const button of document.querySelectorAll("nav button")) {
    button.classList.toggle("active", button.dataset.tab === tab);
  }
  const url = new URL(location.href);
  url.searchParams.set("tab", tab);
  history.replaceState(null, "", url);
  if (tab === "configuration" && !configLoaded) loadConfig();
  if (last) draw(last);
}

async function loadConfig() {
  try {
    const answer = await fetch("/api/config", { cache: "no-store" });
    const body = await answer.json();
    $("config").textContent = body.config;
    configLoaded = true;
  } catch (error) {
    $("config").textContent = "could not read the configuration: " + error;
  }
}

function drawOverview(s) {
  const o = s.overview;
  $("source").textContent = o.source_topic + " (group " + o.group + ")";
  $("sink").textContent = o.sink_topic;
  const state = $("state");
  state.textContent = o.ready ? "running" : "not ready";
  state.className = "badge " + (o.ready ? "running" : "not-ready");
  setText("ov-running", o.ready ? "Running" : "Not ready", o.ready);
  setText("ov-uptime", duration(o.uptime_ms), o.uptime_ms);
  setText("ov-delivery", o.delivery, o.delivery);
  setText("ov-workers", count(o.workers), o.workers);
  setText("ov-records-in", count(o.records_in), o.records_in);
  setText("ov-records-out", count(o.records_out), o.records_out);
  setText("ov-lag", count(o.lag_total), o.lag_total);
  setText("ov-dead-lettered", count(o.dead_lettered), o.dead_lettered);
  const newest = s.rates[s.rates.length - 1];
  setText("ov-in-rate", rate(newest ? newest.records_in : 0));
  setText("ov-out-rate", rate(newest ? newest.records_out : 0));
  if (current === "overview") drawChart(s.rates, s.now_ms);
}

function drawChart(rates, nowMs) {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight || 180;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  // The last five minutes, or the last minute while there is less to show.
  const oldest = rates.length ? nowMs - rates[0].at_ms : 0;
  const span = Math.min(300000, Math.max(60000, Math.ceil(oldest / 60000) * 60000));
  const minutes = span / 60000;
  const left = 56, bottom = 20, top = 8, right = 8;
  const plotW = width - left - right, plotH = height - top - bottom;
  let max = 1;
  for (const r of rates) max = Math.max(max, r.records_in, r.records_out);
  const scale = niceMax(max);
  g.strokeStyle = "#dde3e9"; g.fillStyle = "#6b7785"; g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + plotW, y); g.stroke();
    g.fillText(count((scale * i) / 4), 4, y + 4);
  }
  const step = minutes === 1 ? 10000 : 60000;
  for (let age = 0; age <= span; age += step) {
    const x = left + plotW - (plotW * age) / span;
    const label = age === 0 ? "now" : step === 10000 ? "-" + age / 1000 + "s" : "-" + age / 60000 + "m";
    g.fillText(label, Math.min(x - 10, width - 26), height - 4);
  }
  const line = (key, color) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    let started = false;
    for (const r of rates) {
      const age = nowMs - r.at_ms;
      if (age > span) continue;
      const x = left + plotW - (plotW * age) / span;
      const y = top + plotH - (plotH * r[key]) / scale;
      if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
    }
    g.stroke();
  };
  line("records_in", "#2f6fb2");
  line("records_out", "#2e9d6a");
}

function niceMax(max) {
  const power = Math.pow(10, Math.floor(Math.log10(max)));
  for (const step of [1, 2, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

function drawPartitions(s) {
  replaceRows("partitions", s.partitions.map((p) =>
    el("tr", { "data-partition": p.topic + "/" + p.partition },
      el("td", {}, p.topic),
      el("td", { class: "num" }, p.partition),
      el("td", { class: "num" }, p.worker),
      el("td", { class: "num", "data-committed": p.committed }, p.committed < 0 ? "–" : count(p.committed)),
      el("td", { class: "num", "data-end": p.end }, p.end < 0 ? "–" : count(p.end)),
      el("td", { class: "num", "data-lag": p.lag === null ? "" : p.lag }, count(p.lag)),
      el("td", { class: "num" }, rate(p.records_per_second)))));
  if (!s.partitions.length) {
    replaceRows("partitions", [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No partition reported yet (the consumers report once a second)."))]);
  }
}

function drawCheckpoints(s) {
  const c = s.checkpoints;
  setText("cp-completed", count(c.completed), c.completed);
  setText("cp-failed", count(c.failed), c.failed);
  setText("cp-aborted", count(c.aborted), c.aborted);
  setText("cp-p50", ms(c.p50_ms), c.p50_ms);
  setText("cp-p99", ms(c.p99_ms), c.p99_ms);
  replaceRows("checkpoints", c.recent.map((r) => {
    const outcome = el("td", { class: "outcome-" + r.outcome }, r.outcome);
    if (r.reason) outcome.append(el("div", { class: "msg muted" }, r.reason));
    return el("tr", { "data-checkpoint": r.id },
      el("td", { class: "num" }, r.id),
      el("td", {}, time(r.at_ms)),
      el("td", { class: "num" }, r.outcome === "committed" ? ms(r.duration_ms) : "–"),
      el("td", { class: "num" }, bytes(r.state_bytes)),
      el("td", { class: "num" }, r.partitions),
      el("td", { class: "num" }, r.worker === undefined ? "–" : r.worker),
      outcome);
  }));
}

function versionList(id, v, language) {
  const list = $(id);
  if (!v) {
    list.replaceChildren(el("dt", {}, "none"), el("dd", {}, "no swap yet"));
    return;
  }
  const rows = [
    ["Version", v.version], ["Digest", "sha256:" + v.digest], ["Language", language],
    ["Code", v.code], ["Origin", v.origin], ["Since", v.since],
  ];
  list.replaceChildren(...rows.flatMap(([k, val]) => [el("dt", {}, k), el("dd", { "data-field": k.toLowerCase() }, val)]));
}

function drawPlugin(s) {
  const p = s.plugin;
  versionList("pl-live", p.live, p.live_language);
  versionList("pl-previous", p.previous, p.previous_language);
  const probation = $("pl-probation");
  if (p.probation_until_ms) {
    probation.textContent = "On probation for " + duration(p.probation_until_ms - s.now_ms) +
      " more: a trap or too many failed records rolls it back. Workers run versions " + p.workers.join(", ") + ".";
  } else {
    probation.textContent = "Not on probation. Workers run versions " + p.workers.join(", ") + ".";
  }
  $("pl-counts").textContent = "(" + p.swaps + " swaps, " + p.rejections + " rejected, " + p.rollbacks + " rolled back)";
  const events = p.history.slice().reverse();
  $("timeline").replaceChildren(...events.map((e) => {
    const item = el("li", { class: "event-" + e.event, "data-event": e.event },
      el("span", { class: "when" }, e.at + " · " + e.trigger.toLowerCase() + " "),
      el("strong", {}, e.event),
      " " + e.origin + (e.version ? " → version " + e.version : "") + (e.digest ? " (sha256:" + e.digest.slice(0, 12) + ")" : ""));
    if (e.reason) item.append(el("span", { class: "reason" }, e.reason));
    return item;
  }));
  const uploads = s.overview.uploads;
  $("upload-button").disabled = !uploads;
  if (!uploads && !$("upload-result").textContent) {
    $("upload-result").textContent = "Uploads are off: plugin.allowed_dir restricts swaps to files in that directory.";
  }
}

function drawExceptions(s) {
  replaceRows("exceptions", s.exceptions.map((e) =>
    el("tr", {},
      el("td", {}, time(e.at_ms)),
      el("td", { class: "level-" + e.level }, e.level),
      el("td", { class: "num" }, e.worker === undefined ? "–" : e.worker),
      el("td", {}, e.plugin_version || "–"),
      el("td", {}, e.record || "–"),
      el("td", { class: "msg" }, e.message))));
  if (!s.exceptions.length) {
    replaceRows("exceptions", [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No warnings or errors."))]);
  }
}

function draw(s) {
  drawOverview(s);
  if (current === "partitions") drawPartitions(s);
  if (current === "checkpoints") drawCheckpoints(s);
  if (current === "plugin") drawPlugin(s);
  if (current === "exceptions") drawExceptions(s);
  document.body.dataset.updated = String(s.now_ms);
}

async function poll() {
  try {
    const answer = await fetch("/api/console", { cache: "no-store" });
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    last = await answer.json();
    draw(last);
  } catch (error) {
    const state = $("state");
    state.textContent = "unreachable";
    state.className = "badge unreachable";
  }
  setTimeout(poll, 1000);
}

async function upload(event) {
  event.preventDefault();
  const result = $("upload-result");
  const file = $("plugin-file").files[0];
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  if (!file) { result.textContent = "Choose a component (.wasm) first."; result.className = "note bad"; return; }
  result.textContent = "Validating " + file.name + "…";
  result.className = "note";
  try {
    const answer = await fetch("/plugin/upload", {
      method: "POST",
      headers: {
        "Content-Type": "application/wasm",
        "Authorization": "Bearer " + (sessionStorage.getItem(TOKEN_KEY) || ""),
        "X-Plugin-Name": file.name.replace(/[^A-Za-z0-9._-]/g, ""),
      },
      body: file,
    });
    const body = await answer.json();
    if (body.error) {
      result.textContent = "Refused (" + answer.status + "): " + body.error;
      result.className = "note bad";
    } else if (body.outcome === "rejected") {
      result.textContent = "Rejected; the live version stays: " + body.reason;
      result.className = "note bad";
    } else {
      result.textContent = file.name + ": " + body.outcome + " (version " + body.version + ", sha256:" + body.digest + ")";
      result.className = "note ok";
    }
    result.dataset.outcome = body.error ? "refused" : body.outcome;
  } catch (error) {
    result.textContent = "The upload failed: " + error;
    result.className = "note bad";
    result.dataset.outcome = "failed";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("nav button")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("upload-form").addEventListener("submit", upload);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) $("token").value = saved;
  window.addEventListener("resize", () => last && current === "overview" && drawChart(last.rates, last.now_ms));
  show(new URL(location.href).searchParams.get("tab") || "overview");
  poll();
});
