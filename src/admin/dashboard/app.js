// Sluice dashboard: reads the admin API, follows the live event stream, acts through the
// same API after a confirmation. No framework, no build step; every text goes in through
// textContent.
"use strict";

const POINTS = 120;           // samples kept per chart (two minutes at one a second)
const DECISIONS = 40;         // decisions listed
const DECISION_KINDS = new Set([
  "rolled_back", "breach", "breach_cleared", "promoted", "canary_set", "weight_set", "resumed",
  "probe_failed", "probe_recovered", "deployment_started", "deployment_step",
  "deployment_paused", "deployment_resumed", "deployment_stalled", "deployment_succeeded", "deployment_failed",
  "deployment_aborted", "rollback_refused", "release_ready", "release_failed",
  "container_restored", "release_missing", "discovered", "config_reloaded", "reload_failed",
  "notify_failed", "freeze_changed", "analysis_inconclusive",
]);
const SEVERITY = {
  rolled_back: "critical", breach: "critical", deployment_failed: "critical",
  rollback_refused: "critical", probe_failed: "critical", release_missing: "critical",
  release_failed: "critical", reload_failed: "warning", deployment_aborted: "warning",
  notify_failed: "warning", promoted: "good", deployment_succeeded: "good",
  probe_recovered: "good", breach_cleared: "good",
};

const S = {
  token: sessionStorage.getItem("sluice-token") || "",
  series: new Map(),     // service -> { last: {t, stable, canary}, points: [...] }
  cards: new Map(),      // service -> elements
  active: new Map(),     // service -> live deployment view
  deployments: [],
  selected: null,
  stream: null,
  timer: null,
  focus: null,
  pending: null,         // the action waiting for confirmation
  seen: new Set(),       // event seqs listed
};

function $(sel, root) { return (root || document).querySelector(sel); }
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}
function fmt(n, digits) {
  if (n == null || Number.isNaN(n)) return "–";
  return Number(n).toFixed(digits == null ? 1 : digits);
}
function pct(n) {
  if (n == null) return "–";
  return (Number.isInteger(n) ? n : Number(n).toFixed(3).replace(/0+$/, "").replace(/\.$/, "")) + "%";
}
function when(ms) {
  const d = new Date(ms);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (S.token) headers.Authorization = "Bearer " + S.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  headers["x-sluice-actor"] = "dashboard";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) {
    const msg = (data && data.error && data.error.message) || ("HTTP " + resp.status);
    if (resp.status === 401) showLogin(msg);
    throw new ApiError(resp.status, msg);
  }
  return data;
}

function toast(text, isError) {
  const t = $("#toast");
  t.textContent = text;
  t.className = isError ? "error" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, isError ? 8000 : 3500);
}

// ---- login ---------------------------------------------------------------------------

function showLogin(message) {
  stop();
  $("#main").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = S.token ? message : "";
}

function useToken(token) {
  S.token = token;
  if (token) sessionStorage.setItem("sluice-token", token);
  else sessionStorage.removeItem("sluice-token");
  $("#logout").hidden = !token;
}

// ---- services --------------------------------------------------------------------------

function failures(totals) {
  return (totals["5xx"] || 0) + (totals.none || 0);
}
function requests(totals) {
  return Object.values(totals || {}).reduce((a, b) => a + b, 0);
}

/** One sample per arm: requests/s and 5xx/s since the last read, p95 of the window. */
function sample(service, now) {
  let s = S.series.get(service.name);
  if (!s) { s = { last: null, points: [] }; S.series.set(service.name, s); }
  const arms = { stable: service.arms.stable, canary: service.arms.canary };
  const point = { t: now };
  for (const [role, arm] of Object.entries(arms)) {
    if (!arm) { point[role] = null; continue; }
    const prev = s.last && s.last[role];
    const dt = s.last ? (now - s.last.t) / 1000 : 0;
    let rate = null, err = null;
    if (prev && dt > 0) {
      const dr = requests(arm.totals) - requests(prev);
      const de = failures(arm.totals) - failures(prev);
      // A new arm starts its totals again.
      if (dr >= 0 && de >= 0) { rate = dr / dt; err = de / dt; }
    }
    point[role] = { rate, err, p95: arm.stats.p95_ms };
  }
  s.last = { t: now, stable: arms.stable && arms.stable.totals, canary: arms.canary && arms.canary.totals };
  s.points.push(point);
  if (s.points.length > POINTS) s.points.shift();
  return s.points;
}

function draw(canvas, points, pick) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  let max = 0;
  for (const p of points) for (const role of ["stable", "canary"]) {
    const v = p[role] && pick(p[role]);
    if (v != null && v > max) max = v;
  }
  ctx.fillStyle = "#6b7480";
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(max ? fmt(max, max < 10 ? 2 : 0) : "0", 3, 10);
  if (!max) max = 1;
  const colors = { stable: "#2f6fb3", canary: "#e07b24" };
  for (const role of ["stable", "canary"]) {
    ctx.strokeStyle = colors[role];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    points.forEach((p, i) => {
      const v = p[role] && pick(p[role]);
      if (v == null) { started = false; return; }
      // The newest sample at the right edge.
      const x = ((i + POINTS - points.length) / Math.max(POINTS - 1, 1)) * (w - 2) + 1;
      const y = h - 2 - (v / max) * (h - 14);
      if (!started) { ctx.moveTo(x, y); started = true; } else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

function actionButton(action, label, cls) {
  return el("button", { type: "button", class: cls || "", "data-action": action, text: label });
}

function card(name) {
  let c = S.cards.get(name);
  if (c) return c;
  const root = el("article", { class: "card", "data-service": name });
  const head = el("div", { class: "card-head" },
    el("h3", { text: name }),
    el("span", { class: "badge", "data-field": "state" }),
    el("span", { class: "muted", "data-field": "route" }),
    el("span", { class: "weight", "data-field": "weight", title: "canary weight" }));
  const tls = el("div", { class: "certs", "data-field": "tls", hidden: true });
  const arms = el("table", { class: "arms" },
    el("thead", {}, el("tr", {},
      el("th", { text: "arm" }), el("th", { text: "upstreams" }),
      el("th", { class: "num", text: "req/s" }), el("th", { class: "num", text: "errors" }),
      el("th", { class: "num", text: "p95 ms" }))),
    el("tbody", {}));
  const charts = el("div", { class: "charts" });
  for (const [key, label] of [["rate", "requests / s"], ["err", "5xx / s"], ["p95", "p95 ms"]]) {
    charts.append(el("figure", {}, el("figcaption", { text: label }),
      el("canvas", { width: 170, height: 60, "data-chart": key })));
  }
  const judge = el("div", { class: "judge", "data-field": "judge" });
  const decision = el("details", { class: "judge" },
    el("summary", { "data-field": "decision" }), el("pre", { "data-field": "evidence" }));
  const deploy = el("div", { class: "deploy", "data-field": "deployment", hidden: true });
  const weightInput = el("input", { type: "number", min: 0, max: 100, step: "0.1", "data-field": "weight-input", "aria-label": "new weight" });
  const controls = el("div", { class: "controls" },
    weightInput, actionButton("weight", "Set weight"),
    actionButton("promote", "Promote"), actionButton("rollback", "Roll back", "danger"),
    actionButton("resume", "Resume canary"),
    el("span", { class: "spacer" }),
    actionButton("deployment-pause", "Pause"), actionButton("deployment-resume", "Resume"),
    actionButton("deployment-promote", "Promote now"), actionButton("deployment-abort", "Abort", "danger"));
  root.append(head, tls, arms, charts, judge, decision, deploy, controls);
  $("#services").append(root);
  c = { root };
  S.cards.set(name, c);
  return c;
}

function renderService(svc, points) {
  const c = card(svc.name);
  const r = c.root;
  const state = $('[data-field="state"]', r);
  state.textContent = svc.state;
  state.className = "badge " + svc.state;
  $('[data-field="route"]', r).textContent =
    (svc.hosts.length ? svc.hosts.join(", ") : "any host") + svc.path_prefix;
  $('[data-field="weight"]', r).textContent = pct(svc.canary_weight);
  renderCertificates($('[data-field="tls"]', r), svc.tls || []);
  const input = $('[data-field="weight-input"]', r);
  if (document.activeElement !== input && input.value === "") input.placeholder = String(svc.canary_weight);
  const body = $("tbody", r);
  body.replaceChildren();
  const last = points[points.length - 1] || {};
  for (const role of ["stable", "canary"]) {
    const arm = svc.arms[role];
    if (!arm) continue;
    const ups = el("td", {});
    arm.upstreams.forEach((u, i) => {
      if (i) ups.append(", ");
      ups.append(el("span", { class: arm.down.includes(u) ? "down" : "", text: u }));
    });
    const now = last[role] || {};
    body.append(el("tr", { "data-arm": role },
      el("td", {}, el("span", { class: "dot " + role }), role),
      ups,
      el("td", { class: "num", text: fmt(now.rate, 1) }),
      el("td", { class: "num", text: fmt(arm.stats.error_rate * 100, 2) + "%" }),
      el("td", { class: "num", text: fmt(arm.stats.p95_ms, 1) })));
  }
  draw($('[data-chart="rate"]', r), points, (a) => a.rate);
  draw($('[data-chart="err"]', r), points, (a) => a.err);
  draw($('[data-chart="p95"]', r), points, (a) => a.p95);
  const judge = svc.judge && svc.judge.verdict;
  const j = $('[data-field="judge"]', r);
  if (judge) {
    const v = judge.verdict || "";
    j.textContent = "judge: " + v + (judge.reason ? " — " + judge.reason : "") +
      (svc.judge.watching ? " (watching)" : "");
    j.className = "judge " + v;
  } else {
    j.textContent = svc.arms.canary ? "judge: no verdict yet" : "no canary";
    j.className = "judge";
  }
  const d = svc.judge && svc.judge.last_decision;
  $('[data-field="decision"]', r).textContent = d ? "last decision: " + d.message : "no decision yet";
  $('[data-field="evidence"]', r).textContent = d ? JSON.stringify(d.evidence, null, 2) : "";
  renderDeployment(r, S.active.get(svc.name));
  const dep = S.active.get(svc.name);
  for (const b of r.querySelectorAll('[data-action^="deployment-"]')) b.hidden = !dep;
  if (dep) {
    const paused = dep.state === "paused";
    $('[data-action="deployment-pause"]', r).hidden = paused;
    $('[data-action="deployment-resume"]', r).hidden = !paused;
  }
  $('[data-action="promote"]', r).hidden = !svc.arms.canary;
  $('[data-action="resume"]', r).hidden = svc.state !== "rolled_back";
  $('[data-action="rollback"]', r).hidden = !svc.arms.canary || svc.state === "rolled_back";
}

// One line per host: which certificate TLS clients get, its issuer and expiry, and the
// ACME orders' trouble when there is some.
function renderCertificates(box, list) {
  box.hidden = !list.length;
  box.replaceChildren(...list.map((t) => {
    const soon = t.not_after_ms && t.not_after_ms - Date.now() < 14 * 86400e3;
    let text = t.host + ": " + t.source;
    if (t.covered_by && t.covered_by !== t.host) text += " (" + t.covered_by + ")";
    text += t.not_after_ms
      ? ", " + t.issuer + ", until " + new Date(t.not_after_ms).toISOString().slice(0, 10)
      : ", no certificate (handshakes refused)";
    if (t.acme && t.acme.failures) text += " — " + t.acme.failures + " failed orders: " + (t.acme.last_error || "");
    return el("div", { class: "cert" + (soon || !t.not_after_ms || (t.acme && t.acme.failures) ? " warn" : ""), "data-host": t.host, text });
  }));
}

function renderDeployment(root, view) {
  const box = $('[data-field="deployment"]', root);
  if (!view) { box.hidden = true; box.replaceChildren(); return; }
  box.hidden = false;
  const live = view.live || {};
  const p = live.progress || {};
  const parts = [el("div", {},
    el("strong", { text: (live.strategy || "deployment") + " " + (live.label || live.id || "") }),
    " — " + (view.state || "") + (live.summary ? ", " + live.summary : "") +
      (p.waiting ? " (waiting for " + p.waiting + ")" : ""))];
  const steps = p.spec && p.spec.steps;
  if (steps && steps.length) {
    const current = p.step ? p.step[0] - 1 : -1;
    const row = el("div", { class: "steps" });
    steps.forEach((s, i) => {
      const label = s.pause ? "pause" : pct(s.weight) + (s.bake ? " · " + s.bake : "");
      row.append(el("span", {
        class: "step" + (i < current ? " done" : i === current ? " current" : ""), text: label,
      }));
    });
    parts.push(row);
  }
  let done = 0;
  if (p.step) done = (p.step[0] - 1) / Math.max(p.step[1], 1);
  else if (live.instances && live.instances.total) done = live.instances.updated / live.instances.total;
  else if (live.weight != null) done = live.weight / 100;
  const bar = el("div", { class: "bar" }, el("div", {}));
  bar.firstChild.style.width = Math.round(Math.min(Math.max(done, 0), 1) * 100) + "%";
  parts.push(bar);
  box.replaceChildren(...parts);
  box.setAttribute("data-deployment", live.id || "");
}

async function refresh() {
  const data = await api("GET", "/api/v1/services");
  $("#table").textContent = "routing table v" + data.table_version;
  const now = Date.now();
  const names = new Set();
  for (const svc of data.services) {
    names.add(svc.name);
    renderService(svc, sample(svc, now));
  }
  for (const [name, c] of S.cards) {
    if (!names.has(name)) { c.root.remove(); S.cards.delete(name); S.series.delete(name); }
  }
}

// ---- deployments and decisions ---------------------------------------------------------

async function loadDeployments() {
  let data;
  try {
    data = await api("GET", "/api/v1/deployments?limit=25");
  } catch (e) {
    if (e.status === 503) { $("#deployments tbody").replaceChildren(el("tr", {}, el("td", { colSpan: 5, text: e.message }))); return; }
    throw e;
  }
  S.deployments = data.items || [];
  const body = $("#deployments tbody");
  body.replaceChildren();
  const active = new Map();
  for (const d of S.deployments) {
    const tr = el("tr", { "data-id": d.id, class: d.id === S.selected ? "selected" : "" },
      el("td", { text: when(d.started_ms) }),
      el("td", { text: d.service }),
      el("td", { text: d.strategy }),
      el("td", { text: d.label || "" }),
      el("td", { class: "outcome-" + d.outcome, text: d.outcome }));
    body.append(tr);
    // Deployments with a plan (started through the API or CLI), not a canary set by hand.
    const planned = d.detail && d.detail.progress;
    if ((d.outcome === "running" || d.outcome === "paused") && planned && !active.has(d.service)) {
      active.set(d.service, d.id);
    }
  }
  const views = new Map();
  for (const [service, id] of active) {
    try { views.set(service, await api("GET", "/api/v1/deployments/" + encodeURIComponent(id))); } catch (_) { /* gone meanwhile */ }
  }
  S.active = views;
}

async function showTrend(id) {
  S.selected = id;
  for (const tr of document.querySelectorAll("#deployments tbody tr")) {
    tr.className = tr.getAttribute("data-id") === id ? "selected" : "";
  }
  const data = await api("GET", "/api/v1/deployments/" + encodeURIComponent(id) + "/trend");
  const d = data.deployment || {};
  $("#trend").hidden = false;
  $("#trend-title").textContent = (d.service || "") + " " + (d.label || d.id || id) + ": " + (d.outcome || "");
  const arms = data.arms || {};
  const length = Math.max(...Object.values(arms).map((a) => a.length), 0);
  const points = [];
  for (let i = 0; i < length; i++) {
    points.push({ stable: arms.stable && arms.stable[i], canary: arms.canary && arms.canary[i] });
  }
  for (const canvas of document.querySelectorAll("[data-trend]")) {
    const key = canvas.getAttribute("data-trend");
    draw(canvas, points, (a) => (key === "error_rate" ? a[key] * 100 : a[key]));
  }
  const list = $("#trend-decisions");
  list.replaceChildren(...(data.decisions || []).map((e) => eventItem(e)));
}

function eventItem(e) {
  const evidence = typeof e.evidence === "string" ? e.evidence : JSON.stringify(e.evidence, null, 2);
  return el("li", { class: SEVERITY[e.kind] || "", "data-kind": e.kind },
    el("div", { class: "when", text: when(e.at_ms) + " · " + e.kind + (e.service ? " · " + e.service : "") + " · " + e.actor }),
    el("div", { text: e.message }),
    evidence && evidence !== "null" ? el("details", {}, el("summary", { text: "evidence" }), el("pre", { text: evidence })) : null);
}

function addDecision(e, atEnd) {
  const key = e.seq + ":" + e.at_ms;
  if (!DECISION_KINDS.has(e.kind) || S.seen.has(key)) return;
  S.seen.add(key);
  const list = $("#decisions");
  const item = eventItem(e);
  if (atEnd) list.append(item); else list.prepend(item);
  while (list.children.length > DECISIONS) list.lastChild.remove();
}

async function loadDecisions() {
  try {
    const data = await api("GET", "/api/v1/history?limit=" + DECISIONS);
    for (const e of data.items || []) addDecision(e, true);
  } catch (e) {
    if (e.status !== 503) throw e;
  }
}

// ---- the live stream -------------------------------------------------------------------

async function connect() {
  if (S.stream) S.stream.close();
  let url = "/api/v1/events";
  try {
    const t = await api("POST", "/api/v1/tickets");
    url += "?ticket=" + encodeURIComponent(t.ticket);
  } catch (e) {
    if (e.status === 401) return;
    setTimeout(connect, 3000);
    return;
  }
  const es = new EventSource(url);
  S.stream = es;
  const live = $("#live");
  es.onopen = () => { live.textContent = "live"; live.className = "badge on"; };
  es.onerror = () => {
    live.textContent = "reconnecting"; live.className = "badge off";
    es.close();
    if (S.stream === es) { S.stream = null; setTimeout(connect, 2000); }
  };
  const onEvent = (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    addDecision(e, false);
    // A change of state shows at once, not at the next poll.
    refresh().catch(() => {});
    if (e.kind.startsWith("deployment_")) loadDeployments().catch(() => {});
  };
  es.onmessage = onEvent;
  for (const kind of DECISION_KINDS) es.addEventListener(kind, onEvent);
}

// ---- actions ---------------------------------------------------------------------------

function ask(text, run) {
  S.pending = run;
  $("#confirm-text").textContent = text;
  $("#confirm").hidden = false;
  $("#confirm-yes").focus();
}

function act(service, action) {
  const svc = encodeURIComponent(service);
  const dep = S.active.get(service);
  const depId = dep && dep.live && dep.live.id;
  const r = S.cards.get(service).root;
  switch (action) {
    case "weight": {
      const input = $('[data-field="weight-input"]', r);
      const w = Number(input.value);
      if (input.value === "" || !(w >= 0 && w <= 100)) { toast("weight: a number from 0 to 100", true); return; }
      return ask(`Set ${service}'s canary weight to ${w}%?`, async () => {
        await api("POST", `/api/v1/services/${svc}/weight`, { weight: w });
        input.value = "";
        return `${service}: canary weight ${w}%`;
      });
    }
    case "promote":
      return ask(`Promote ${service}'s canary to stable?`, async () => {
        await api("POST", `/api/v1/services/${svc}/promote`);
        return `${service}: canary promoted`;
      });
    case "rollback":
      return ask(`Roll ${service} back? The canary goes to 0% at once and is held there.`, async () => {
        await api("POST", `/api/v1/services/${svc}/rollback`, { reason: "rolled back from the dashboard" });
        return `${service}: rolled back`;
      });
    case "resume":
      return ask(`Give ${service}'s held canary traffic again?`, async () => {
        await api("POST", `/api/v1/services/${svc}/resume`, {});
        return `${service}: canary resumed`;
      });
    default:
      if (action.startsWith("deployment-") && depId) {
        const verb = action.slice("deployment-".length);
        const what = { pause: "Pause", resume: "Resume", promote: "Promote now (skip the remaining steps of)", abort: "Abort (an instant rollback of)" }[verb];
        return ask(`${what} deployment ${depId} of ${service}?`, async () => {
          await api("POST", `/api/v1/deployments/${encodeURIComponent(depId)}/${verb}`);
          await loadDeployments();
          return `${service}: deployment ${verb}`;
        });
      }
  }
}

// ---- start -----------------------------------------------------------------------------

function stop() {
  if (S.timer) { clearInterval(S.timer); S.timer = null; }
  if (S.stream) { S.stream.close(); S.stream = null; }
}

async function start() {
  stop();
  try {
    await loadDeployments();
    await refresh();
  } catch (e) {
    if (e.status !== 401) toast(e.message, true);
    return;
  }
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = !S.token;
  await loadDecisions().catch((e) => toast(e.message, true));
  connect();
  let tick = 0;
  S.timer = setInterval(() => {
    tick++;
    refresh().catch((e) => { if (e.status !== 401) toast(e.message, true); });
    if (tick % 5 === 0) loadDeployments().catch(() => {});
  }, 1000);
  if (S.focus && S.focus.deployment) showTrend(S.focus.deployment).catch(() => {});
  if (S.focus && S.focus.service) {
    const c = S.cards.get(S.focus.service);
    if (c) c.root.scrollIntoView();
  }
}

function init() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    useToken(hash.get("token"));
    hash.delete("token");
    history.replaceState(null, "", location.pathname + location.search + (hash.toString() ? "#" + hash : ""));
  }
  S.focus = { service: hash.get("service"), deployment: hash.get("deployment") };
  $("#logout").hidden = !S.token;
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    useToken($("#token").value.trim());
    $("#token").value = "";
    start();
  });
  $("#logout").addEventListener("click", () => { useToken(""); showLogin(""); });
  $("#confirm-no").addEventListener("click", () => { S.pending = null; $("#confirm").hidden = true; });
  $("#confirm-yes").addEventListener("click", async () => {
    const run = S.pending;
    S.pending = null;
    $("#confirm").hidden = true;
    if (!run) return;
    try {
      toast(await run());
      await refresh();
    } catch (e) {
      toast(e.message, true);
    }
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("#confirm").hidden) $("#confirm-no").click();
  });
  $("#services").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (!b) return;
    const card = b.closest("[data-service]");
    act(card.getAttribute("data-service"), b.getAttribute("data-action"));
  });
  $("#deployments tbody").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-id]");
    if (tr) showTrend(tr.getAttribute("data-id")).catch((e) => toast(e.message, true));
  });
  start();
}

document.addEventListener("DOMContentLoaded", init);
