// bulkjobs dashboard: plain JS, no build step. URLs are relative to the page, so the
// dashboard works under any base path. Running jobs are followed with EventSource.
"use strict";

const MAX_LIVE = 4; // browsers allow ~6 HTTP/1.1 connections per host: keep room for fetch
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const state = { jobs: new Map(), order: [], live: new Map(), selected: null, failuresNext: null };
const $ = (id) => document.getElementById(id);

// With API keys configured, the key typed into the page is kept for this browser tab
// only (sessionStorage) and sent as a Bearer token. EventSource cannot send headers:
// it uses the job's `links.events`, which then carries a signed, job-scoped token.
const KEY_STORE = "bulkjobs.apiKey";

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  const headers = Object.assign({}, options.headers || {});
  if (key) headers.Authorization = `Bearer ${key}`;
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  const body = resp.status === 204 ? null : await resp.json();
  if (resp.status === 401) showKeyForm(body && body.detail);
  if (!resp.ok) throw new Error(body && body.detail ? body.detail : `HTTP ${resp.status}`);
  return body;
}

function showKeyForm(reason) {
  $("key-card").hidden = false;
  $("key-msg").textContent = reason || "This server needs an API key.";
}

function saveKey(event) {
  event.preventDefault();
  const key = new FormData(event.target).get("key").trim();
  if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
  $("key-card").hidden = true;
  refreshList();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

const time = (ts) => (ts ? new Date(ts).toLocaleTimeString() : "–");
const shortId = (id) => `${id.slice(0, 8)}…${id.slice(-4)}`;
const num = (n) => Number(n || 0).toLocaleString("en-US");

// Bars and texts are drawn from the counters, never from `progress`: a job cancelled
// after 248 of 20,000 items has progress 1.0 (every item is terminal), yet only 248 ran.
const SEGMENTS = [["succeeded", "ok"], ["failed", "bad"], ["cancelled", "cxl"]];

function ranShare(job) {
  const total = job.total_items || 0;
  return total ? ((job.succeeded || 0) + (job.failed || 0)) / total : 0;
}

const pct = (job) => `${Math.floor(ranShare(job) * 100)}%`;

function summary(job) {
  const ran = (job.succeeded || 0) + (job.failed || 0);
  let text = `${num(ran)} of ${num(job.total_items)} ran`;
  if (job.failed) text += `, ${num(job.failed)} failed`;
  if (job.cancelled) text += `, ${num(job.cancelled)} cancelled`;
  return text;
}

function segmentedBar(job, extra = "") {
  // CSSOM, not a style attribute: the page's Content-Security-Policy blocks those.
  const bar = el("div", { class: `bar seg ${extra}`.trim(), role: "img", "aria-label": summary(job) });
  for (const [field, kind] of SEGMENTS) {
    const part = el("span", { class: kind, "data-seg": field });
    part.style.width = `${job.total_items ? (100 * (job[field] || 0)) / job.total_items : 0}%`;
    bar.append(part);
  }
  return bar;
}

function progressCell(job) {
  return el("div", { class: "progress", title: summary(job) }, segmentedBar(job),
    el("span", { class: "pct", "data-role": "pct" }, pct(job)));
}

function jobRow(job) {
  const row = el("tr", { "data-job": job.id },
    el("td", {}, el("code", { title: job.id }, shortId(job.id))),
    el("td", {}, job.operation),
    el("td", {}, el("span", { class: `badge ${job.status}`, "data-role": "status" }, job.status)),
    el("td", {}, progressCell(job)),
    el("td", { class: "num" }, String(job.failed)),
    el("td", { class: "muted" }, time(job.created_at)));
  if (job.id === state.selected) row.classList.add("selected");
  row.addEventListener("click", () => selectJob(job.id));
  return row;
}

function renderList() {
  const body = $("jobs-body");
  body.replaceChildren(...state.order.map((id) => jobRow(state.jobs.get(id))));
  $("jobs-empty").hidden = state.order.length > 0;
  $("conn").textContent = `${state.live.size} live`;
}

function renderDetail() {
  const job = state.jobs.get(state.selected);
  $("detail").hidden = !job;
  if (!job) return;
  $("detail-id").textContent = shortId(job.id);
  $("detail-id").title = job.id;
  const status = $("detail-status");
  status.textContent = job.status;
  status.className = `badge ${job.status}`;
  $("detail-bar").replaceChildren(segmentedBar(job, "big"));
  $("detail-progress").textContent = pct(job);
  $("detail-counts").textContent = summary(job);
  $("detail-operation").textContent = job.operation;
  $("detail-created").textContent = time(job.created_at);
  $("detail-completed").textContent = time(job.completed_at);
  $("detail-error").hidden = !job.error;
  $("detail-error").textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  $("detail-cancel").disabled = TERMINAL.has(job.status);
}

function upsert(job, { front = false } = {}) {
  const old = state.jobs.get(job.id) || {};
  state.jobs.set(job.id, { ...old, ...job });
  if (!state.order.includes(job.id)) {
    if (front) state.order.unshift(job.id); else state.order.push(job.id);
  }
}

// -- live progress over SSE ------------------------------------------------

function follow(job) {
  if (TERMINAL.has(job.status) || state.live.has(job.id) || state.live.size >= MAX_LIVE) return;
  const source = new EventSource(job.links.events);
  state.live.set(job.id, source);
  const onEvent = (ev) => applyEvent(JSON.parse(ev.data));
  for (const type of ["snapshot", "progress", "status"]) source.addEventListener(type, onEvent);
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) unfollow(job.id);
  };
}

function unfollow(jobId) {
  const source = state.live.get(jobId);
  if (source) source.close();
  state.live.delete(jobId);
  renderList();
}

function applyEvent(ev) {
  const update = ev.job ? ev.job : {
    status: ev.status, total_items: ev.total_items, processed: ev.processed,
    succeeded: ev.succeeded, failed: ev.failed, cancelled: ev.cancelled, progress: ev.progress,
  };
  upsert({ id: ev.job_id, ...update });
  if (TERMINAL.has(ev.status)) finished(ev.job_id);
  renderList();
  if (ev.job_id === state.selected) renderDetail();
}

async function finished(jobId) {
  unfollow(jobId);
  upsert(await api(`bulk-jobs/${jobId}`)); // completed_at, error
  renderList();
  if (jobId === state.selected) {
    renderDetail();
    loadFailures(true);
  }
  followRunning();
}

function followRunning() {
  for (const id of state.order) follow(state.jobs.get(id));
  renderList();
}

// -- list, detail, failures ------------------------------------------------

async function refreshList() {
  const page = await api("bulk-jobs?limit=15");
  state.order = [];
  for (const job of page.data) upsert(job);
  renderList();
  renderDetail();
  followRunning();
}

async function selectJob(jobId) {
  state.selected = jobId;
  renderList();
  renderDetail();
  await loadFailures(true);
}

async function loadFailures(reset) {
  const job = state.jobs.get(state.selected);
  if (!job) return;
  const url = reset ? `bulk-jobs/${job.id}/items?status=failed&limit=20` : state.failuresNext;
  const page = await api(url);
  const rows = page.data.map((item) => el("tr", {},
    el("td", { class: "num" }, String(item.index)),
    el("td", {}, item.id || "–"),
    el("td", {}, el("code", {}, item.error ? item.error.code : "")),
    el("td", {}, item.error ? item.error.message : "")));
  if (reset) $("failures-body").replaceChildren(...rows); else $("failures-body").append(...rows);
  state.failuresNext = page.links.next;
  $("failures-more").hidden = !page.links.next;
  $("failures-empty").hidden = $("failures-body").children.length > 0;
}

async function cancelSelected() {
  const job = state.jobs.get(state.selected);
  if (!job) return;
  try {
    upsert(await api(`bulk-jobs/${job.id}/cancel`, { method: "POST" }));
  } catch (err) {
    $("form-msg").textContent = err.message;
  }
  renderList();
  renderDetail();
}

// -- the demo form ---------------------------------------------------------

function demoItems(operation, count, ms, failEvery) {
  const fails = (i) => failEvery > 0 && i % failEvery === failEvery - 1;
  const items = new Array(count);
  for (let i = 0; i < count; i++) {
    if (operation === "sleep") items[i] = { ms, fail: fails(i) };
    else if (operation === "noop") items[i] = { value: i };
    else items[i] = { id: fails(i) ? `ord_missing_${i}` : `ord_${(i % 1000) + 1}`, status: "paid" };
  }
  return items;
}

async function submitDemo(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const operation = form.get("operation");
  const items = demoItems(operation, Number(form.get("items")), Number(form.get("ms")),
    Number(form.get("fail_every")));
  const msg = $("form-msg");
  msg.className = "msg";
  msg.textContent = "Submitting…";
  try {
    const job = await api("bulk-jobs", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ operation, items }),
    });
    msg.textContent = `Accepted: ${job.id}`;
    upsert(job, { front: true });
    follow(job);
    await selectJob(job.id);
  } catch (err) {
    msg.className = "msg error";
    msg.textContent = err.message;
  }
}

function start() {
  $("demo-form").addEventListener("submit", submitDemo);
  $("key-form").addEventListener("submit", saveKey);
  $("refresh").addEventListener("click", refreshList);
  $("detail-cancel").addEventListener("click", cancelSelected);
  $("failures-more").addEventListener("click", () => loadFailures(false));
  $("demo-operation").addEventListener("change", (ev) => {
    $("demo-ms").disabled = ev.target.value !== "sleep";
  });
  refreshList();
}

start();
