// bulkjobs dashboard: plain JS, no build step. URLs are relative to the page, so the
// dashboard works under any base path. Everything live comes from ONE EventSource on
// the tenant-wide stream (`links.events` of GET overview), however many jobs run: a
// browser holds only ~6 HTTP/1.1 connections per host, so one stream per job cannot scale.
"use strict";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const PAGE = 15;
const state = {
  jobs: new Map(), // id -> job (with `_seq`, the newest event applied)
  order: [], // ids shown in the list, newest first
  next: null, // the list's next page
  source: null, // the EventSource
  route: { view: "list", id: null },
  items: { next: null, paged: false, reloadTimer: null },
  itemsSeen: null,
};
const $ = (id) => document.getElementById(id);

// With API keys configured, the key typed into the page is kept for this browser tab
// only (sessionStorage) and sent as a Bearer token. EventSource cannot send headers:
// the overview's `links.events` then carries a signed, tenant-scoped token.
const KEY_STORE = "bulkjobs.apiKey";

class ApiError extends Error {
  constructor(status, problem, retryAfter) {
    super(problem && problem.detail ? problem.detail : status ? `HTTP ${status}` : "The server is not reachable.");
    this.status = status;
    this.problem = problem || {};
    this.retryAfter = retryAfter;
  }
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  const headers = Object.assign({}, options.headers || {});
  if (key) headers.Authorization = `Bearer ${key}`;
  let resp;
  try {
    resp = await fetch(path, Object.assign({}, options, { headers }));
  } catch (err) {
    throw new ApiError(0, null, null);
  }
  if (resp.ok && options.raw) return resp;
  const text = resp.status === 204 ? "" : await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (err) { body = null; }
  if (!resp.ok) {
    const error = new ApiError(resp.status, body, Number(resp.headers.get("Retry-After")) || null);
    if (resp.status === 401) showKeyForm(error.message);
    throw error;
  }
  return body;
}

// -- states: banner, connection, API key ------------------------------------

function showBanner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

function reportError(err) {
  if (!(err instanceof ApiError)) { showBanner(String(err)); return; }
  if (err.status === 0) showBanner("The server is not reachable: is bulkjobs running? Retrying…");
  else if (err.status === 401) showBanner("This server needs an API key: enter one below.");
  else if (err.status === 429) {
    showBanner(`Too many requests: ${err.message} Retrying in ${err.retryAfter || 5} s.`);
  } else showBanner(err.message);
}

function setConn(text, kind) {
  $("conn").textContent = text;
  $("conn").className = `conn ${kind}`;
}

function showKeyForm(reason) {
  $("key-card").hidden = false;
  $("key-msg").textContent = reason || "This server needs an API key.";
  if (state.route.view !== "list") location.hash = "#/";
}

function saveKey(event) {
  event.preventDefault();
  const key = new FormData(event.target).get("key").trim();
  if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
  $("key-card").hidden = true;
  showBanner("");
  boot();
}

// -- formatting -------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

// Every timestamp with its date, in UTC: "2026-12-02 15:28:14Z".
const stamp = (ts) => (ts ? `${new Date(ts).toISOString().slice(0, 19).replace("T", " ")}Z` : "–");
const shortId = (id) => `${id.slice(0, 8)}…${id.slice(-4)}`;
const num = (n) => Number(n || 0).toLocaleString("en-US");

function span(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// Bars and texts are drawn from the counters, never from `progress`: a job cancelled
// after 248 of 20,000 items has progress 1.0 (every item is terminal), yet only 248 ran.
const SEGMENTS = [["succeeded", "ok"], ["failed", "bad"], ["cancelled", "cxl"]];
const ran = (job) => (job.succeeded || 0) + (job.failed || 0);

function ranShare(job) {
  return job.total_items ? ran(job) / job.total_items : 0;
}

const pct = (job) => `${Math.floor(ranShare(job) * 100)}%`;

function summary(job) {
  let text = `${num(ran(job))} of ${num(job.total_items)} ran`;
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

function timing(job) {
  const start = job.started_at ? Date.parse(job.started_at) : null;
  const end = job.completed_at ? Date.parse(job.completed_at) : Date.now();
  const elapsed = start ? (end - start) / 1000 : null;
  const rate = elapsed ? ran(job) / elapsed : null;
  const left = (job.total_items || 0) - (job.processed || 0);
  const eta = !TERMINAL.has(job.status) && rate ? left / rate : null;
  return { elapsed, rate, eta };
}

// -- the job list -------------------------------------------------------------

function progressCell(job) {
  return el("div", { class: "progress", title: summary(job) }, segmentedBar(job),
    el("span", { class: "pct", "data-role": "pct" }, pct(job)));
}

function jobRow(job) {
  const link = el("a", { href: `#/jobs/${job.id}`, title: job.id }, el("code", {}, shortId(job.id)));
  const row = el("tr", { "data-job": job.id },
    el("td", {}, link),
    el("td", { class: "opt" }, job.operation || ""),
    el("td", {}, el("span", { class: `badge ${job.status}`, "data-role": "status" }, job.status)),
    el("td", {}, progressCell(job)),
    el("td", { class: "num opt", "data-role": "failed" }, num(job.failed)),
    el("td", { class: "muted opt" }, stamp(job.created_at)));
  row.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.hash = `#/jobs/${job.id}`; });
  return row;
}

function renderList() {
  $("jobs-body").replaceChildren(...state.order.map((id) => jobRow(state.jobs.get(id))));
  $("jobs-loading").hidden = true;
  $("jobs-empty").hidden = state.order.length > 0;
  $("jobs-more").hidden = !state.next;
}

function listQuery() {
  const params = new URLSearchParams({ limit: String(PAGE) });
  if ($("filter-status").value) params.set("status", $("filter-status").value);
  if ($("filter-operation").value) params.set("operation", $("filter-operation").value);
  return `bulk-jobs?${params}`;
}

function matchesFilters(job) {
  const status = $("filter-status").value;
  const operation = $("filter-operation").value;
  return (!status || job.status === status) && (!operation || job.operation === operation);
}

async function loadList(more = false) {
  const page = await api(more ? state.next : listQuery());
  if (!more) state.order = [];
  for (const job of page.data) {
    upsert(job);
    if (!state.order.includes(job.id)) state.order.push(job.id);
  }
  state.next = page.links.next;
  renderList();
}

function upsert(job, seq = null) {
  const old = state.jobs.get(job.id);
  if (old && seq != null && old._seq != null && seq < old._seq) return false; // stale
  state.jobs.set(job.id, Object.assign({}, old || {}, job, seq != null ? { _seq: seq } : {}));
  return true;
}

// -- the tenant-wide stream -----------------------------------------------------

function openStream(url) {
  if (state.source) return; // it reconnects by itself, resuming with Last-Event-ID
  const source = new EventSource(url);
  state.source = source;
  source.addEventListener("open", () => {
    setConn("live", "live");
    showBanner("");
    scheduleOverview(); // it now counts this stream
  });
  source.addEventListener("snapshot", (ev) => onSnapshot(JSON.parse(ev.data)));
  for (const type of ["created", "progress", "status"]) {
    source.addEventListener(type, (ev) => onJobEvent(type, JSON.parse(ev.data)));
  }
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // refused (401 after the token expired, 429, 503): get a fresh link, then retry
      setConn("offline", "off");
      state.source = null;
      setTimeout(refreshOverview, 3000);
    } else setConn("reconnecting…", "off");
  });
}

function onSnapshot(data) {
  const active = new Set();
  for (const { seq, job } of data.jobs) {
    active.add(job.id);
    upsert(job, seq);
  }
  // jobs we thought active that are not any more finished while we were away
  for (const [id, job] of state.jobs) {
    if (!TERMINAL.has(job.status) && !active.has(id)) refetch(id);
  }
  renderAll();
}

function onJobEvent(type, ev) {
  const update = {
    id: ev.job_id, status: ev.status, operation: ev.operation, total_items: ev.total_items,
    processed: ev.processed, succeeded: ev.succeeded, failed: ev.failed,
    cancelled: ev.cancelled, progress: ev.progress, created_at: ev.created_at,
    started_at: ev.started_at, completed_at: ev.completed_at,
  };
  if (!upsert(update, ev.seq)) return;
  if (type === "created" && !state.order.includes(ev.job_id) && matchesFilters(update)) {
    state.order.unshift(ev.job_id);
  }
  if (TERMINAL.has(ev.status)) refetch(ev.job_id); // error, expires_at, result_url
  if (type !== "progress") scheduleOverview();
  renderAll();
}

async function refetch(id) {
  try {
    const job = await api(`bulk-jobs/${id}`);
    upsert(job);
  } catch (err) {
    if (err.status === 404 || err.status === 410) {
      state.jobs.delete(id);
      state.order = state.order.filter((x) => x !== id);
    }
  }
  renderAll();
}

let renderQueued = false;
function renderAll() {
  // many events in one frame render once
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (state.route.view === "list") renderList(); else renderJob();
  });
}

let overviewTimer = null;
function scheduleOverview() {
  // a burst of created/status events asks for the overview once
  if (overviewTimer) return;
  overviewTimer = setTimeout(() => { overviewTimer = null; refreshOverview(); }, 300);
}

// -- overview -------------------------------------------------------------------

async function refreshOverview() {
  try {
    const ov = await api("overview");
    $("ov-backlog").textContent = num(ov.backlog_items);
    $("ov-running").textContent = `${num(ov.running_jobs)} (+${num(ov.pending_jobs)} pending)`;
    $("ov-rate").textContent = num(Math.round(ov.items_per_s));
    $("ov-streams").textContent = num(ov.open_streams);
    if ($("banner").dataset.source === "overview") showBanner("");
    // relative to the page, like every other URL here
    openStream(ov.links.events.replace(/^.*\/events/, "events"));
    return true;
  } catch (err) {
    reportError(err);
    $("banner").dataset.source = "overview";
    setConn("offline", "off");
    return false;
  }
}

// -- the job page ---------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/jobs\/(job_[0-9a-z]+)$/);
  const previous = state.route.id;
  state.route = match ? { view: "job", id: match[1] } : { view: "list", id: null };
  $("list-view").hidden = state.route.view !== "list";
  $("job-view").hidden = state.route.view !== "job";
  if (state.route.view === "job") {
    if (previous !== state.route.id) openJob(state.route.id);
  } else {
    document.title = "bulkjobs dashboard";
    renderList();
  }
}

async function openJob(id) {
  $("action-msg").textContent = "";
  $("items-body").replaceChildren();
  state.itemsSeen = null;
  document.title = `${id} · bulkjobs`;
  try {
    upsert(await api(`bulk-jobs/${id}`));
  } catch (err) {
    reportError(err);
    return;
  }
  renderJob();
  loadItems(true);
  loadDeliveries(id);
}

function renderJob() {
  const job = state.jobs.get(state.route.id);
  if (!job || !job.links) return;
  $("detail-id").textContent = job.id;
  const status = $("detail-status");
  status.textContent = job.status;
  status.className = `badge ${job.status}`;
  $("detail-bar").replaceChildren(segmentedBar(job, "big"));
  $("detail-progress").textContent = pct(job);
  $("detail-counts").textContent = summary(job);
  $("detail-operation").textContent = job.operation;
  const t = timing(job);
  $("detail-rate").textContent = t.rate != null ? `${num(Math.round(t.rate))} items/s` : "–";
  $("detail-eta").textContent = TERMINAL.has(job.status) ? "done" : span(t.eta);
  $("detail-duration").textContent = span(t.elapsed);
  $("detail-created").textContent = stamp(job.created_at);
  $("detail-started").textContent = stamp(job.started_at);
  $("detail-completed").textContent = stamp(job.completed_at);
  $("detail-expires").textContent = stamp(job.expires_at);
  renderLineage(job);
  $("detail-error").hidden = !job.error;
  $("detail-error").textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  const done = TERMINAL.has(job.status);
  $("act-cancel").disabled = done;
  $("act-delete").disabled = !done;
  $("act-retry").disabled = !done || !job.failed;
  // the items on show follow the counters: reload the first page when they move
  const seen = state.itemsSeen;
  if (seen !== null && !state.items.paged && (job.processed !== seen.processed ||
      job.failed !== seen.failed || job.status !== seen.status)) {
    scheduleItemsReload(); // at most twice a second
  }
}

function renderLineage(job) {
  const parts = [];
  for (const [rel, label] of [["retry_of", "retry of"], ["retried_by", "retried by"]]) {
    const href = job.links[rel];
    if (href) {
      const id = href.split("/").pop();
      parts.push(el("span", {}, `${label} `, el("a", { href: `#/jobs/${id}` }, shortId(id))), " ");
    }
  }
  $("detail-lineage").replaceChildren(...(parts.length ? parts : ["–"]));
}

function scheduleItemsReload() {
  if (state.items.reloadTimer) return;
  state.items.reloadTimer = setTimeout(() => {
    state.items.reloadTimer = null;
    loadItems(true);
  }, 500);
}

async function loadItems(reset) {
  const job = state.jobs.get(state.route.id);
  if (!job) return;
  const status = $("items-status").value;
  const url = reset ? `bulk-jobs/${job.id}/items?limit=50${status ? `&status=${status}` : ""}` : state.items.next;
  let page;
  try {
    page = await api(url);
  } catch (err) {
    $("action-msg").textContent = err.message;
    return;
  }
  const rows = page.data.map((item) => el("tr", { "data-item": item.id || "" },
    el("td", { class: "num" }, String(item.index)),
    el("td", {}, item.id || "–"),
    el("td", {}, el("span", { class: `badge ${item.status}` }, item.status)),
    el("td", {}, el("code", {}, item.error ? item.error.code : "")),
    el("td", { class: "wrap" }, item.error ? item.error.message : "")));
  if (reset) $("items-body").replaceChildren(...rows); else $("items-body").append(...rows);
  state.items.next = page.links.next;
  state.items.paged = !reset;
  state.itemsSeen = { processed: job.processed, failed: job.failed, status: job.status };
  $("items-more").hidden = !page.links.next;
  filterItems();
}

function filterItems() {
  const q = $("items-search").value.trim().toLowerCase();
  let shown = 0;
  for (const row of $("items-body").children) {
    const hit = !q || row.dataset.item.toLowerCase().includes(q);
    row.hidden = !hit;
    if (hit) shown += 1;
  }
  $("items-empty").hidden = shown > 0;
}

async function loadDeliveries(id) {
  try {
    const page = await api(`bulk-jobs/${id}/webhook-deliveries`);
    const hook = page.webhook;
    $("webhook-state").textContent = hook ? `${hook.url} (${hook.status})` : "This job has no webhook.";
    $("webhook-list").replaceChildren(...page.data.map((m) => el("li", {},
      `${m.type}: ${m.status}, ${m.attempt_count} attempt(s), created ${stamp(m.created_at)}`)));
  } catch (err) {
    $("webhook-state").textContent = err.message;
  }
}

// -- actions ----------------------------------------------------------------------

function showRefusal(err) {
  const msg = $("action-msg");
  msg.className = "msg error";
  const pointers = (err.problem.errors || []).map((e) => `${e.pointer}: ${e.detail}`);
  msg.textContent = [err.message, ...pointers].join(" · ");
}

function confirmAction(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-no").focus();
  });
}

async function act(run) {
  const msg = $("action-msg");
  msg.className = "msg";
  msg.textContent = "Working…";
  try {
    msg.textContent = (await run()) || "";
  } catch (err) {
    showRefusal(err);
  }
}

async function download(format, status) {
  const job = state.jobs.get(state.route.id);
  await act(async () => {
    const query = `format=${format}${status ? `&status=${status}` : ""}`;
    const resp = await api(`bulk-jobs/${job.id}/results?${query}`, { raw: true });
    const blob = await resp.blob();
    const link = el("a", { href: URL.createObjectURL(blob), download: `${job.id}${status ? "-" + status : ""}.${format}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    return `Downloaded ${link.download}.`;
  });
}

async function cancelJob() {
  const job = state.jobs.get(state.route.id);
  if (!(await confirmAction(`Cancel job ${job.id}? Items not yet run will not run.`))) return;
  await act(async () => {
    upsert(await api(`bulk-jobs/${job.id}/cancel`, { method: "POST" }));
    renderJob();
    return "Cancel requested.";
  });
}

async function deleteJob() {
  const job = state.jobs.get(state.route.id);
  if (!(await confirmAction(`Delete job ${job.id} and all its items?`))) return;
  await act(async () => {
    await api(`bulk-jobs/${job.id}`, { method: "DELETE" });
    state.jobs.delete(job.id);
    state.order = state.order.filter((x) => x !== job.id);
    location.hash = "#/";
    return "";
  });
}

async function retryJob() {
  const job = state.jobs.get(state.route.id);
  await act(async () => {
    const fresh = await api(`bulk-jobs/${job.id}/retry`, { method: "POST" });
    upsert(fresh);
    if (!state.order.includes(fresh.id)) state.order.unshift(fresh.id);
    location.hash = `#/jobs/${fresh.id}`;
    return "";
  });
}

// -- the demo form ------------------------------------------------------------------

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
  const items = demoItems(operation, Number(form.get("items")), Number(form.get("ms") || 0),
    Number(form.get("fail_every") || 0));
  const msg = $("form-msg");
  msg.className = "msg";
  msg.textContent = "Submitting…";
  try {
    const job = await api("bulk-jobs", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ operation, items }),
    });
    msg.textContent = `Accepted: ${job.id}`;
    upsert(job);
    if (!state.order.includes(job.id)) state.order.unshift(job.id);
    location.hash = `#/jobs/${job.id}`;
  } catch (err) {
    msg.className = "msg error";
    const pointers = (err.problem && err.problem.errors || []).map((e) => `${e.pointer}: ${e.detail}`);
    msg.textContent = [err.message, ...pointers].join(" · ");
  }
}

function formFits() {
  const operation = $("demo-operation").value;
  $("demo-ms").disabled = operation !== "sleep";
  $("demo-fail").disabled = operation === "noop";
}

async function loadOperations() {
  const ops = await api("operations");
  const select = $("filter-operation");
  select.replaceChildren(el("option", { value: "" }, "all"),
    ...ops.data.map((o) => el("option", { value: o.name }, o.name)));
}

async function boot() {
  const ok = await refreshOverview();
  if (!ok) { setTimeout(boot, 5000); return; }
  try {
    await loadList();
    await loadOperations();
  } catch (err) {
    reportError(err);
  }
  route();
}

function start() {
  $("demo-form").addEventListener("submit", submitDemo);
  $("key-form").addEventListener("submit", saveKey);
  $("demo-operation").addEventListener("change", formFits);
  $("filter-status").addEventListener("change", () => loadList().catch(reportError));
  $("filter-operation").addEventListener("change", () => loadList().catch(reportError));
  $("jobs-more").addEventListener("click", () => loadList(true).catch(reportError));
  $("items-status").addEventListener("change", () => loadItems(true));
  $("items-search").addEventListener("input", filterItems);
  $("items-more").addEventListener("click", () => loadItems(false));
  $("dl-ndjson").addEventListener("click", () => download("ndjson"));
  $("dl-csv").addEventListener("click", () => download("csv"));
  $("dl-failures").addEventListener("click", () => download("csv", "failed"));
  $("act-cancel").addEventListener("click", cancelJob);
  $("act-delete").addEventListener("click", deleteJob);
  $("act-retry").addEventListener("click", retryJob);
  window.addEventListener("hashchange", route);
  window.addEventListener("unhandledrejection", (ev) => { ev.preventDefault(); reportError(ev.reason); });
  setInterval(() => { if (!document.hidden) refreshOverview(); }, 5000);
  setInterval(() => { if (state.route.view === "job") renderJob(); }, 1000); // ETA, duration
  formFits();
  boot();
}

start();
