// ftopt planner page. State lives in the URL query (parameter names = `ftopt plan` flags); every number shown comes
// from the server's plan (the CLI's code path). User strings are set with textContent only, never as HTML.
"use strict";
const FIELDS = ["model", "gpu", "gpu_memory_gib", "gpu_bandwidth_gbs", "gpus", "nodes", "seq_len", "micro_batch",
  "precision", "batching", "lora_r", "method", "lora_targets", "adapter_dtype", "dora", "rslora", "lora_dropout",
  "qlora_recipe", "full_only", "quant", "optim", "engine", "max_hours", "dataset_tokens", "cost_per_gpu_hour", "currency", "headroom"];
const BOOLS = ["full_only", "dora", "rslora"];  // checkboxes: "true" when on, not given when off
const LISTS = ["quant", "optim", "engine"];  // checkbox lists: comma lists, not given when they are the CLI's set
const CATS = ["weights", "master_weights", "optimizer_states", "gradients", "activations", "logits_loss",
  "engine_buffers", "temporaries"];
const COLORS = ["#0072b2", "#56b4e9", "#009e73", "#f0e442", "#e69f00", "#d55e00", "#cc79a7", "#999999"];
const GIB = 2 ** 30;
const $ = (id) => document.getElementById(id);
let META = null, LANG = "en", LAST = null, CONFIG = null, inflight = null, job = null, timer = null, GEN = 0;
const charts = {};

function T(key, vars) {
  let s = (META && META.text[LANG][key]) || key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replace("{" + k + "}", String(v));
  return s;
}
function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// ---- inputs <-> URL query ----------------------------------------------------------------------------------------
function checkedList(id) {
  const on = [...$(id).querySelectorAll("input:checked")].map((b) => b.value);
  const dflt = META[id + "_default"];  // the set `ftopt plan` tries when the flag is not given
  return on.length === dflt.length && dflt.every((x) => on.includes(x)) ? "" : on.join(",");
}
function readInputs() {
  const q = new URLSearchParams();
  for (const f of FIELDS) {
    let v;
    if (BOOLS.includes(f)) v = $(f).checked ? "true" : "";
    else if (LISTS.includes(f)) v = checkedList(f);
    else v = $(f).value.trim();
    if (f === "method" && v === META.method_default) v = "";  // the CLI's default: links stay short
    if (v !== "") q.set(f, v);
  }
  if (LANG !== "en") q.set("lang", LANG);
  return q;
}
function writeInputs(q) {
  for (const f of FIELDS) {
    const v = q.get(f);
    if (BOOLS.includes(f)) $(f).checked = v === "true" || v === "1";
    else if (LISTS.includes(f)) {
      const want = v === null ? META[f + "_default"] : v.split(",");
      for (const b of $(f).querySelectorAll("input")) b.checked = want.includes(b.value);
    } else if (v !== null) $(f).value = v;
  }
  if (!q.get("model")) $("model").value = "llama-2-7b";
  if (!q.get("gpu")) $("gpu").value = "a100-80g";
  LANG = q.get("lang") === "ja" ? "ja" : "en";
}
function planQuery() {
  const q = readInputs();
  q.delete("lang");
  if (q.get("model") === "llama-2-7b" && !CONFIG) q.delete("model");  // the CLI's default: links stay short
  return q;
}

// ---- language ----------------------------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = LANG;
  document.title = T("page_title");
  for (const e of document.querySelectorAll("[data-t]")) e.textContent = T(e.dataset.t);
  if (LAST) render(LAST);
}

// ---- requests ----------------------------------------------------------------------------------------------------
function showErrors(body) {
  for (const e of document.querySelectorAll(".err")) e.textContent = "";
  for (const e of document.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
  if (!body || !body.error) return;
  const target = body.field && $("err-" + body.field) ? body.field : "general";
  $("err-" + target).textContent = body.error;
  if ($(target)) $(target).setAttribute("aria-invalid", "true");
}
// the server takes a POST only as application/json (a cross-site page cannot send that without a preflight)
function postJSON(url, doc, signal) {
  return fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(doc), signal });
}
function schedule() {
  clearTimeout(timer);
  timer = setTimeout(update, 120);  // one request per pause in typing, not per key
}
async function update() {
  const full = readInputs();
  history.replaceState(null, "", full.toString() ? "?" + full.toString() : location.pathname);
  const q = planQuery();
  $("dl-export").href = "/api/export?" + q.toString();
  if (inflight) inflight.abort();
  const gen = ++GEN;  // a job started for older inputs is dropped, not shown
  await cancelJob();
  // the analytic answer at once (the page's live view); a traced plan then confirms it as a cancellable job
  const traced = (q.get("method") || META.method_default) === "traced";
  const fast = new URLSearchParams(q);
  fast.set("method", "analytic");
  inflight = new AbortController();
  $("status").textContent = T("working");
  try {
    const r = CONFIG
      ? await postJSON("/api/plan", { query: Object.fromEntries(fast), config: CONFIG }, inflight.signal)
      : await fetch("/api/plan?" + fast.toString(), { signal: inflight.signal });
    const body = await r.json();
    received(body);
    if (traced && !body.error && gen === GEN) startJob(q, gen);
  } catch (e) {
    if (e.name !== "AbortError") showErrors({ error: String(e) });
  }
}
function received(body) {
  $("status").textContent = body.server_ms !== undefined ? T("server_ms", { ms: body.server_ms }) : "";
  showErrors(body);
  $("out").classList.toggle("stale", !!body.error);  // what is still shown belongs to the last valid inputs
  if (body.error) return;
  LAST = body;
  render(body);
}

// traced plans: a job on the server, polled for progress, cancellable
async function startJob(q, gen) {
  const r = await postJSON("/api/jobs", { query: Object.fromEntries(q), config: CONFIG });
  const body = await r.json();
  if (gen !== GEN) return body.id && fetch("/api/jobs/" + body.id, { method: "DELETE" });
  if (body.error) return received(body);
  job = body.id;
  $("cancel").hidden = false;  // not focused: the user may still be typing in an input
  $("status").textContent = T("preview");
  poll(job);
}
async function poll(id) {
  if (job !== id) return;
  const s = await (await fetch("/api/jobs/" + id)).json();
  if (job !== id) return;
  if (s.state === "running") {
    $("status").textContent = T("tracing", { s: s.elapsed_s });
    setTimeout(() => poll(id), 500);
    return;
  }
  job = null;
  $("cancel").hidden = true;
  // the export follows the plan shown: this job's (confirmed) run, not the analytic one of the inputs
  if (s.result && !s.result.error) $("dl-export").href = "/api/export?job=" + encodeURIComponent(id);
  received(s.result);
}
async function cancelJob() {
  if (!job) return;
  const id = job;
  job = null;
  $("cancel").hidden = true;
  await fetch("/api/jobs/" + id, { method: "DELETE" });
  $("status").textContent = T("cancelled");
  $("cancel").blur();
}

// ---- rendering ---------------------------------------------------------------------------------------------------
function gib(b) { return (b / GIB).toFixed(1) + " GiB"; }
function hours(c) { return (c.total_seconds ?? c.seconds_per_1k_samples) / 3600; }
function fmtTime(sec) {
  if (sec < 60) return sec.toFixed(1) + T("unit_s");
  if (sec < 3600) return (sec / 60).toFixed(1) + T("unit_min");
  return (sec / 3600).toFixed(1) + T("unit_h");
}
function money(c, p) {
  if (c.cost === null || c.cost === undefined) return "";
  return ", " + c.cost.toFixed(2) + " " + p.currency + " " + T(c.cost_basis === "run" ? "per_run" : "per_1k");
}
function render(body) {
  const p = body.plan, v = body.views;
  const rec = p.candidates.find((c) => p.recommended && sameKey(c, p.recommended));
  $("rec-label").textContent = rec ? rec.label : T("none_fits");
  $("rec-figures").textContent = rec
    ? gib(rec.device_bytes_per_gpu) + " (" + T("est_" + rec.method) + "), " + fmtTime(hours(rec) * 3600) + money(rec, p) : "";
  $("rec-label").dataset.key = JSON.stringify(p.recommended);
  $("rec-reason").textContent = p.reason;
  $("answered").textContent = p.answered_by ? T("answered", { by: Object.entries(p.answered_by).filter(([, m]) => m).map(([k, m]) => k + " " + m).join(", ") }) : "";
  $("fallbacks").textContent = Object.entries(p.fallbacks || {})
    .map(([k, f]) => T("not_confirmed", { what: T("answer_" + k), why: f.message })).join(" ");
  $("shortfall").textContent = p.shortfall || "";
  $("longest").textContent = p.longest_context
    ? p.longest_context + " (" + T("bound_" + p.longest_context_bound) + ")" : "—";
  $("fewest").textContent = p.fewest_gpus ?? "—";
  $("command").textContent = body.command || "";
  const est = (p.answered_by && p.answered_by.recommended) || p.method;  // the estimate that chose the exported run
  $("dl-export").textContent = T("download_export") + " (" + T("est_" + est) + ")";
  const blob = new Blob([JSON.stringify(p, null, 2)], { type: "application/json" });
  if ($("dl-json").href.startsWith("blob:")) URL.revokeObjectURL($("dl-json").href);
  $("dl-json").href = URL.createObjectURL(blob);
  drawMemory(p, v);
  drawPareto(p, v, rec);
  drawTechniques(p, v);
}
function sameKey(c, k) { return Object.keys(k).every((f) => JSON.stringify(c[f]) === JSON.stringify(k[f])); }

function chart(id, config) {
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart($(id), config);
  $(id).setAttribute("aria-label", T(id === "chart-memory" ? "chart_memory_h" : "chart_pareto_h"));
}
function drawMemory(p, v) {
  const shown = p.candidates.filter((c) => c.fits || c.tight).slice(0, 24);
  const labels = shown.map((c) => c.label + (c.tight ? " (" + T("tight").split(":")[0] + ")" : ""));
  const datasets = CATS.map((cat, i) => ({
    type: "bar", label: T("cat_" + cat), backgroundColor: COLORS[i], stack: "m",
    data: shown.map((c) => c.breakdown[cat] / GIB),
  }));
  const cap = v.capacity_bytes / GIB;
  // each line in a stack of its own: on the stacked axis the lines would otherwise add up
  datasets.push({ type: "line", stack: "capacity", label: T("lg_capacity"), data: shown.map(() => cap), borderColor: "#b00020",
    borderWidth: 2, pointRadius: 0 });
  if (p.headroom) datasets.push({ type: "line", stack: "usable", label: T("lg_margin"), data: shown.map((c) => c.usable_bytes / GIB),
    borderColor: "#b00020", borderDash: [6, 4], borderWidth: 1, pointRadius: 0 });
  chart("chart-memory", { type: "bar", data: { labels, datasets }, options: {
    indexAxis: "x", animation: false, maintainAspectRatio: false,
    scales: { x: { stacked: true, ticks: { autoSkip: false, maxRotation: 60, minRotation: 60 } },
      y: { stacked: true, title: { display: true, text: T("ax_gib") } } } } });
}
function drawPareto(p, v, rec) {
  const fit = p.candidates.filter((c) => c.fits);
  const pt = (c) => ({ x: c.device_bytes_per_gpu / GIB, y: hours(c), label: c.label });
  const perRun = p.candidates.length && p.candidates[0].total_seconds !== null;
  // every candidate runs on the same GPUs, so cost is time x a constant: one axis carries both
  const priced = fit.find((c) => c.cost);
  const perHour = priced ? priced.cost / hours(priced) : null;
  const tick = (y) => (perHour ? y.toFixed(2) + T("unit_h") + " · " + (y * perHour).toFixed(0) + " " + p.currency : y.toFixed(2));
  const datasets = [
    { type: "scatter", label: T("lg_candidates"), data: fit.map(pt), backgroundColor: "#56b4e9" },
    { type: "line", label: T("lg_pareto"), data: v.pareto.map((i) => pt(p.candidates[i])), borderColor: "#d55e00",
      backgroundColor: "#d55e00", stepped: false },
  ];
  if (rec) datasets.push({ type: "scatter", label: T("lg_recommended"), data: [pt(rec)], pointStyle: "star",
    pointRadius: 12, borderColor: "#000", borderWidth: 2 });
  chart("chart-pareto", { type: "scatter", data: { datasets }, options: { animation: false, maintainAspectRatio: false,
    plugins: { tooltip: { callbacks: { label: (c) => c.raw.label + ": " + c.raw.x.toFixed(1) + " GiB, " + tick(c.raw.y) } } },
    scales: { x: { title: { display: true, text: T("ax_gib") } },
      y: { ticks: { callback: tick },
        title: { display: true, text: T(perRun ? "ax_time_run" : "ax_time_1k") + (perHour ? " · " + T("ax_cost") : "") } } } } });
}
function cell(p, i) {
  if (i === null || i === undefined) return el("td", T("not_planned"));
  const c = p.candidates[i];
  const mark = c.fits ? "" : c.tight ? " (" + T("tight") + ")" : " ✗";
  return el("td", c.label + ": " + gib(c.device_bytes_per_gpu) + mark + ", " + fmtTime(hours(c) * 3600) + money(c, p));
}
function drawTechniques(p, v) {
  const body = $("techniques").tBodies[0];
  body.replaceChildren();
  for (const t of v.techniques) {
    const tr = el("tr");
    tr.append(el("th", T("t_" + t.technique) + (t.recommended_uses ? " ✓" : ""), { scope: "row" }), cell(p, t.on), cell(p, t.off));
    body.append(tr);
  }
}

// ---- runs and reports --------------------------------------------------------------------------------------------
let progressTimer = null;
function fillResults() {
  const sel = $("results");
  sel.replaceChildren(...META.results.map((n) => el("option", n, { value: n })));
  $("open-report").disabled = !META.results.length;
  if (!META.results.length) $("progress").textContent = T("no_results");
}
async function showProgress() {
  clearTimeout(progressTimer);
  const name = $("results").value;
  if (!name) return;
  const r = await (await fetch("/api/runs/progress?name=" + encodeURIComponent(name))).json();
  if (r.error) { $("err-results").textContent = r.error; return; }
  const statuses = Object.entries(r.by_status).map(([k, n]) => k + " " + n).join(", ");
  $("progress").textContent = T("progress", { finished: r.finished, statuses, started: r.started })
    + (r.running.length ? " — " + T("running_now", { key: r.running[r.running.length - 1] }) : "");
  if (r.running.length) progressTimer = setTimeout(showProgress, 2000);  // a sweep is running: follow it
}
function openReport() {
  const name = $("results").value;
  $("report").hidden = false;
  $("report").src = "/api/runs/report?name=" + encodeURIComponent(name) + "&lang=" + LANG;
  showProgress();
}

// ---- start -------------------------------------------------------------------------------------------------------
function fillInputs() {
  $("model-presets").replaceChildren(...META.models.map((m) => el("option", null, { value: m })));
  $("gpu").replaceChildren(...META.gpus.map((g) => el("option", g, { value: g })));
  for (const f of LISTS) {
    const values = META[f + "s"];
    for (const v of values) {
      const id = f + "-" + v;
      const box = el("input", null, { type: "checkbox", id, value: v });
      $(f).append(box, el("label", v, { for: id }));
    }
  }
  for (const [f, values] of Object.entries(META.choices)) {
    $(f).replaceChildren(el("option", T("opt_default"), { value: "", "data-t": "opt_default" }),
      ...values.map((v) => el("option", v, { value: v })));
  }
  $("method").value = META.method_default;
}
async function start() {
  META = await (await fetch("/api/meta")).json();
  fillInputs();
  fillResults();
  writeInputs(new URLSearchParams(location.search));
  applyLanguage();
  $("inputs").addEventListener("input", (e) => { if (e.target.id !== "config") schedule(); });
  $("inputs").addEventListener("submit", (e) => e.preventDefault());
  $("config").addEventListener("change", async () => {
    const f = $("config").files[0];
    CONFIG = null;
    if (f) {
      try { CONFIG = JSON.parse(await f.text()); $("model").value = f.name; }
      catch (e) { return showErrors({ error: f.name + ": " + e.message, field: "model" }); }
    }
    update();
  });
  $("lang").addEventListener("click", () => { LANG = LANG === "en" ? "ja" : "en"; applyLanguage(); update(); });
  $("cancel").addEventListener("click", cancelJob);
  $("open-report").addEventListener("click", openReport);
  $("results").addEventListener("change", showProgress);
  showProgress();
  update();
}
document.addEventListener("DOMContentLoaded", start);
