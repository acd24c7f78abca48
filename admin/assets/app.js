"use strict";
// The flashsync admin page: vanilla JavaScript over the admin API, with
// the session cookie and the session's CSRF token.
(function () {
  const $ = (id) => document.getElementById(id);
  let session = null;
  let previewed = null; // the body of the last preview, as sent
  const jobs = [];

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  async function api(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf_token;
    const resp = await fetch(path, { method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    if (resp.status !== 204) data = await resp.json().catch(() => null);
    if (!resp.ok) {
      if (resp.status === 401) showLogin();
      throw new Error((data && data.error) || resp.status + " " + resp.statusText);
    }
    return data;
  }

  function showLogin() {
    session = null;
    $("app").hidden = true;
    $("whoami").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = new URLSearchParams(location.search).get("login") !== "failed";
  }

  const help = {
    rows: "one row a line: table column=value[,column=value], e.g. shop.item id=1",
    keys: "one Redis key a line",
    urls: "one URL path a line, e.g. /item/1.html",
    tags: "one tag a line, e.g. item-1",
  };

  function parseRow(line) {
    const m = line.match(/^(\S+)\s+(.+)$/);
    if (!m) throw new Error("row " + JSON.stringify(line) + ": want table column=value");
    const key = {};
    for (const part of m[2].split(",")) {
      const eq = part.indexOf("=");
      if (eq <= 0) throw new Error("row " + JSON.stringify(line) + ": want column=value");
      const v = part.slice(eq + 1).trim();
      key[part.slice(0, eq).trim()] = /^-?\d{1,15}$/.test(v) ? Number(v) : v;
    }
    return { table: m[1], key };
  }

  function formBody() {
    const kind = $("kind").value;
    const lines = $("targets").value.split("\n").map((s) => s.trim()).filter(Boolean);
    const body = { reason: $("reason").value.trim() };
    body[kind] = kind === "rows" ? lines.map(parseRow) : lines;
    if (kind === "keys") {
      const g = $("groups").value.split(",").map((s) => s.trim()).filter(Boolean);
      if (g.length) body.groups = g;
    }
    return body;
  }

  function formChanged() {
    previewed = null;
    $("purge").disabled = true;
    $("kind-help").textContent = help[$("kind").value];
    $("groups-row").hidden = $("kind").value !== "keys";
  }

  function showError(err) {
    $("purge-error").textContent = err ? String(err.message || err) : "";
    $("purge-error").hidden = !err;
  }

  function renderPreview(p) {
    const out = $("preview-out");
    out.replaceChildren();
    out.appendChild(el("h3", p.dry_run ? "Preview (nothing purged yet)" : "Purged: job " + p.job));
    for (const n of p.notes || []) out.appendChild(el("p", n, "help"));
    const c = p.counts;
    out.appendChild(el("p", `${c.keys} keys, ${c.urls} URLs, ${c.tags} tags; ${c.targets} replicas, instances and CDN nodes must acknowledge`));
    const t = el("table");
    t.id = "preview-table";
    const head = el("tr");
    for (const h of ["Tier", "Group", "Topic", "Reaches", "Targets"]) head.appendChild(el("th", h));
    t.appendChild(el("thead")).appendChild(head);
    const tb = t.appendChild(el("tbody"));
    for (const g of p.purges || []) {
      const tr = el("tr");
      tr.dataset.tier = g.tier;
      tr.dataset.group = g.group;
      tr.appendChild(el("td", g.tier));
      tr.appendChild(el("td", g.group));
      tr.appendChild(el("td", g.topic || ""));
      const reach = el("td");
      const ul = reach.appendChild(el("ul", null, "reach"));
      for (const r of [].concat(g.replicas || [], g.instances || [], g.nodes || [])) ul.appendChild(el("li", r, "target-node"));
      tr.appendChild(reach);
      const what = el("td");
      const ul2 = what.appendChild(el("ul", null, "reach"));
      for (const k of g.keys || []) ul2.appendChild(el("li", "key " + k));
      for (const u of g.urls || []) ul2.appendChild(el("li", "url " + u));
      for (const x of g.tags || []) ul2.appendChild(el("li", "tag " + x));
      tr.appendChild(what);
      tb.appendChild(tr);
    }
    out.appendChild(t);
  }

  async function preview() {
    showError(null);
    let body;
    try {
      body = formBody();
      body.dry_run = true;
      const p = await api("POST", "/api/v1/purges", body);
      renderPreview(p);
      delete body.dry_run;
      previewed = JSON.stringify(body);
      if (session.can_purge) $("purge").disabled = false;
    } catch (err) {
      showError(err);
    }
    loadAudit();
  }

  async function purge() {
    showError(null);
    if (!previewed) return;
    const body = JSON.parse(previewed);
    $("purge").disabled = true;
    previewed = null;
    try {
      const p = await api("POST", "/api/v1/purges", body);
      renderPreview(p);
      jobs.unshift({ id: p.job, reason: body.reason, job: null });
      renderJobs();
      pollJob(jobs[0]);
    } catch (err) {
      showError(err);
    }
    loadAudit();
  }

  function renderJobs() {
    const tb = $("jobs").querySelector("tbody");
    tb.replaceChildren();
    for (const j of jobs) {
      const tr = el("tr");
      tr.dataset.job = j.id;
      const s = j.job ? j.job.state : "published";
      tr.appendChild(el("td", j.id, "job-id"));
      tr.appendChild(el("td", j.reason));
      tr.appendChild(el("td", s, "state state-" + s));
      tr.appendChild(el("td", j.job ? j.job.done : ""));
      tr.appendChild(el("td", j.job ? j.job.pending : ""));
      tr.appendChild(el("td", j.job ? j.job.failed : ""));
      tr.appendChild(el("td", j.job && j.job.latency_ms ? j.job.latency_ms.toFixed(1) + " ms" : ""));
      tb.appendChild(tr);
    }
  }

  async function pollJob(j) {
    try {
      j.job = await api("GET", "/api/v1/jobs/" + encodeURIComponent(j.id));
    } catch (err) {
      j.job = { state: "unknown: " + err.message };
      renderJobs();
      return;
    }
    renderJobs();
    if (j.job.state !== "done" && j.job.state !== "failed") setTimeout(() => pollJob(j), 500);
  }

  async function loadAudit() {
    let data;
    try {
      data = await api("GET", "/api/v1/audit?limit=20");
    } catch (err) {
      return;
    }
    const tb = $("audit").querySelector("tbody");
    tb.replaceChildren();
    for (const e of data.entries || []) {
      const tr = el("tr");
      tr.appendChild(el("td", new Date(e.time).toLocaleString()));
      tr.appendChild(el("td", e.user + " (" + e.role + ")"));
      tr.appendChild(el("td", e.action));
      tr.appendChild(el("td", e.outcome + (e.error ? ": " + e.error : "")));
      tr.appendChild(el("td", e.status));
      tr.appendChild(el("td", e.job || ""));
      tr.appendChild(el("td", e.targets));
      tr.appendChild(el("td", e.request, "request"));
      tb.appendChild(tr);
    }
  }

  async function start() {
    try {
      session = await api("GET", "/api/v1/session");
    } catch (err) {
      showLogin();
      return;
    }
    $("login").hidden = true;
    $("user").textContent = session.user;
    $("role").textContent = session.role;
    $("whoami").hidden = false;
    $("app").hidden = false;
    if (!session.can_purge) {
      $("purge").remove(); // a viewer sees no purge button
      $("viewer-note").hidden = false;
    } else {
      $("purge").addEventListener("click", purge);
    }
    $("preview").addEventListener("click", preview);
    for (const id of ["kind", "targets", "groups", "reason"]) $(id).addEventListener("input", formChanged);
    $("audit-refresh").addEventListener("click", loadAudit);
    formChanged();
    loadAudit();
  }

  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/logout"); } catch (err) { /* gone already */ }
    location.replace("/");
  });
  start();
})();
