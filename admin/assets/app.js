"use strict";
// The flashsync admin page: vanilla JavaScript over the admin API, with
// the session cookie and the session's CSRF token. Every panel polls its
// endpoint; a panel whose endpoint fails shows the error and keeps the
// others going.
(function () {
  const $ = (id) => document.getElementById(id);
  let session = null;
  let previewed = null; // the body of the last preview, as sent
  const isAdmin = () => session && session.role === "admin";

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  // APIError keeps the answer's status, so a panel can tell a 404 (an
  // endpoint this server does not have) from a failure.
  class APIError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
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
      throw new APIError((data && data.error) || resp.status + " " + resp.statusText, resp.status);
    }
    return data;
  }

  // poll runs fn now and again after the delay it returns (ms), until the
  // session ends; fn's errors are its own to show.
  function poll(fn) {
    const next = async () => {
      if (!session) return;
      let wait = 5000;
      try { wait = await fn(); } catch (err) { /* shown by fn */ }
      if (session) setTimeout(next, wait);
    };
    next();
  }

  function showError(id, err) {
    $(id).textContent = err ? String(err.message || err) : "";
    $(id).hidden = !err;
  }

  function showLogin() {
    session = null;
    $("app").hidden = true;
    $("whoami").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = new URLSearchParams(location.search).get("login") !== "failed";
  }

  const time = (t) => (t ? new Date(t).toLocaleTimeString() : "");
  const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);

  // changed tells whether a panel's data differs from what it shows: a
  // panel is rebuilt only then, so polling leaves an unchanged page alone.
  const shown = {};
  function changed(panel, data) {
    const j = JSON.stringify(data);
    if (shown[panel] === j) return false;
    shown[panel] = j;
    return true;
  }

  function progress(value, max) {
    const p = el("progress");
    p.max = max > 0 ? max : 1;
    p.value = max > 0 ? value : 0;
    return p;
  }

  // Purge form.

  const help = {
    rows: "one row a line: table column=value[,column=value], e.g. shop.item id=1",
    keys: "one Redis key a line",
    urls: "one URL path a line, e.g. /item/1.html",
    tags: "one tag a line, e.g. item-1",
    patterns: "one Redis glob a line, e.g. item:page:*",
    bans: "one URL regex a line, e.g. ^/item/1\\.html",
    flush_groups: "one Redis group a line: every replica empties its database",
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
    if (kind === "keys" || kind === "patterns") {
      const g = list($("groups").value);
      if (g.length) body.groups = g;
    }
    if (kind === "flush_groups" || kind === "patterns") {
      const c = list($("confirm").value);
      if (c.length) body.confirm = c;
    }
    return body;
  }

  function formChanged() {
    const kind = $("kind").value;
    previewed = null;
    if ($("purge")) $("purge").disabled = true; // a viewer has none
    $("kind-help").textContent = help[kind];
    $("groups-row").hidden = kind !== "keys" && kind !== "patterns";
    $("confirm-row").hidden = kind !== "flush_groups" && kind !== "patterns";
    $("approval-note").hidden = !(session && session.flush_needs_approval && kind === "flush_groups");
  }

  function renderPreview(p, heading) {
    const out = $("preview-out");
    out.replaceChildren();
    out.appendChild(el("h3", heading));
    for (const n of p.notes || []) out.appendChild(el("p", n, "help"));
    const c = p.counts;
    out.appendChild(el("p", `${c.keys} keys, ${c.patterns} patterns, ${c.flushes} flushes, ${c.urls} URLs, ${c.tags} tags, ${c.bans} bans; ` +
      `${c.targets} replicas, instances and CDN nodes must acknowledge`));
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
      if (g.flush) ul2.appendChild(el("li", "flush"));
      for (const k of g.keys || []) ul2.appendChild(el("li", "key " + k));
      for (const k of g.patterns || []) ul2.appendChild(el("li", "pattern " + k));
      for (const u of g.urls || []) ul2.appendChild(el("li", "url " + u));
      for (const x of g.tags || []) ul2.appendChild(el("li", "tag " + x));
      for (const x of g.bans || []) ul2.appendChild(el("li", "ban " + x));
      tr.appendChild(what);
      tb.appendChild(tr);
    }
    out.appendChild(t);
  }

  async function preview() {
    showError("purge-error", null);
    try {
      const body = formBody();
      body.dry_run = true;
      const p = await api("POST", "/api/v1/purges", body);
      renderPreview(p, "Preview (nothing purged yet)");
      delete body.dry_run;
      previewed = JSON.stringify(body);
      if (session.can_purge) $("purge").disabled = false;
    } catch (err) {
      showError("purge-error", err);
    }
    loadAudit();
  }

  async function purge() {
    showError("purge-error", null);
    if (!previewed) return;
    const body = JSON.parse(previewed);
    $("purge").disabled = true;
    previewed = null;
    try {
      const p = await api("POST", "/api/v1/purges", body);
      if (p.approval) {
        renderPreview(p.preview, "Held: a second admin must approve it (approval " + p.approval.id + ")");
        loadApprovals();
      } else {
        renderPreview(p, "Purged: job " + p.job);
        loadJobs();
      }
    } catch (err) {
      showError("purge-error", err);
    }
    loadAudit();
  }

  // Recent jobs: polled every second while one is pending.

  async function loadJobs() {
    let data;
    try {
      data = await api("GET", "/api/v1/jobs?limit=15" + ($("jobs-manual").checked ? "&manual=true" : ""));
      showError("jobs-error", null);
    } catch (err) {
      showError("jobs-error", err);
      return 10000;
    }
    const pending = (data.jobs || []).some((j) => j.state === "pending");
    if (!changed("jobs", data)) return pending ? 1000 : 5000;
    const tb = $("jobs").querySelector("tbody");
    tb.replaceChildren();
    for (const j of data.jobs || []) {
      const tr = el("tr");
      tr.dataset.job = j.id;
      tr.appendChild(el("td", j.id, "id job-id"));
      tr.appendChild(el("td", j.started_by || "binlog"));
      tr.appendChild(el("td", j.reason || "", "reason"));
      tr.appendChild(el("td", j.state, "state state-" + j.state));
      tr.appendChild(el("td")).appendChild(progress(j.done + j.failed, j.done + j.failed + j.pending));
      tr.appendChild(el("td", j.done));
      tr.appendChild(el("td", j.pending));
      tr.appendChild(el("td", j.failed));
      tr.appendChild(el("td", j.latency_ms ? j.latency_ms.toFixed(1) + " ms" : ""));
      tb.appendChild(tr);
    }
    return pending ? 1000 : 5000;
  }

  // Health of every target.

  async function loadHealth() {
    let h;
    try {
      h = await api("GET", "/api/v1/health");
      showError("health-error", null);
    } catch (err) {
      showError("health-error", err);
      return 10000;
    }
    const nsqdDown = (h.nsqd || []).filter((n) => !n.up);
    if (nsqdDown.length) showError("health-error", "backlogs leave out " + nsqdDown.map((n) => n.addr + " (" + n.error + ")").join(", "));
    const down = (h.targets || []).filter((t) => !t.up).length;
    $("health-summary").textContent = `${(h.targets || []).length} targets, ${down} down; checked ${time(h.checked)}`;
    if (!changed("health", h.targets)) return 5000;
    const tb = $("health").querySelector("tbody");
    tb.replaceChildren();
    for (const t of h.targets || []) {
      const tr = el("tr");
      tr.dataset.tier = t.tier;
      tr.dataset.group = t.group;
      tr.dataset.target = t.target;
      tr.appendChild(el("td", t.tier));
      tr.appendChild(el("td", t.group));
      tr.appendChild(el("td", t.target, "id"));
      const st = el("td", t.up ? "up" : "down", "state state-" + (t.up ? "up" : "down"));
      if (t.error) st.title = t.error;
      tr.appendChild(st);
      tr.appendChild(el("td", t.backlog, "backlog"));
      tr.appendChild(el("td", t.in_flight));
      tb.appendChild(tr);
      if (t.error) {
        const er = el("tr");
        const td = el("td", t.error, "error-text");
        td.colSpan = 6;
        er.appendChild(td);
        tb.appendChild(er);
      }
    }
    return 5000;
  }

  // Flushes held for a second admin.

  async function decide(a, decision) {
    showError("approvals-error", null);
    try {
      const r = await api("POST", "/api/v1/approvals/" + encodeURIComponent(a.id) + "/" + decision);
      if (r.preview) renderPreview(r.preview, "Approved: job " + r.preview.job);
      loadJobs();
    } catch (err) {
      showError("approvals-error", err);
    }
    loadApprovals();
    loadAudit();
  }

  async function loadApprovals() {
    let data;
    try {
      data = await api("GET", "/api/v1/approvals?limit=10");
      showError("approvals-error", null);
    } catch (err) {
      showError("approvals-error", err);
      return 10000;
    }
    const all = data.approvals || [];
    const wait = all.some((a) => a.state === "pending") ? 2000 : 5000;
    if (!changed("approvals", all)) return wait;
    const tb = $("approvals").querySelector("tbody");
    tb.replaceChildren();
    $("approvals-empty").hidden = all.length > 0;
    for (const a of all) {
      const tr = el("tr");
      tr.dataset.approval = a.id;
      tr.dataset.state = a.state;
      tr.appendChild(el("td", a.requested_by));
      tr.appendChild(el("td", ((a.request && a.request.flush_groups) || []).join(", ")));
      tr.appendChild(el("td", a.reason, "reason"));
      const st = a.state + (a.decided_by ? " by " + a.decided_by : "") + (a.state === "approved" ? ": job " + a.job : "");
      tr.appendChild(el("td", st, "state state-" + a.state));
      tr.appendChild(el("td", a.state === "pending" ? time(a.expires) : ""));
      const act = tr.appendChild(el("td"));
      if (isAdmin() && a.state === "pending") {
        if (a.requested_by !== session.user) {
          const ok = act.appendChild(el("button", "Approve", "danger approve"));
          ok.type = "button";
          ok.addEventListener("click", () => decide(a, "approve"));
        }
        const no = act.appendChild(el("button", a.requested_by === session.user ? "Withdraw" : "Reject", "reject"));
        no.type = "button";
        no.addEventListener("click", () => decide(a, "reject"));
      }
      tb.appendChild(tr);
    }
    return wait;
  }

  // Replays and re-syncs, as tasks.

  async function startTask(path, body, errorId) {
    showError(errorId, null);
    try {
      await api("POST", path, body);
      loadTasks();
    } catch (err) {
      showError(errorId, err);
    }
    loadAudit();
  }

  function replay() {
    const body = { reason: $("replay-reason").value.trim(), from: $("replay-from").value.trim(), dry_run: $("replay-dry-run").checked };
    if ($("replay-to").value.trim()) body.to = $("replay-to").value.trim();
    const tables = list($("replay-tables").value);
    if (tables.length) body.tables = tables;
    startTask("/api/v1/replays", body, "replay-error");
  }

  function resync() {
    const body = { reason: $("resync-reason").value.trim(), table: $("resync-table").value.trim(), dry_run: $("resync-dry-run").checked };
    if ($("resync-where").value.trim()) body.where = $("resync-where").value.trim();
    if ($("resync-rate").value) body.rows_per_second = Number($("resync-rate").value);
    startTask("/api/v1/resyncs", body, "resync-error");
  }

  async function cancelTask(t) {
    showError("tasks-error", null);
    try {
      await api("POST", "/api/v1/tasks/" + encodeURIComponent(t.id) + "/cancel");
    } catch (err) {
      showError("tasks-error", err);
    }
    loadTasks();
  }

  async function loadTasks() {
    let data;
    try {
      data = await api("GET", "/api/v1/tasks?limit=10");
      showError("tasks-error", null);
    } catch (err) {
      showError("tasks-error", err.status === 404 ? "Replays and re-syncs are not available on this server (HTTP 404)." : err);
      return err.status === 404 ? 30000 : 10000;
    }
    const running = (data.tasks || []).some((t) => t.state === "running");
    if (!changed("tasks", data.tasks)) return running ? 1000 : 5000;
    const tb = $("tasks").querySelector("tbody");
    tb.replaceChildren();
    for (const t of data.tasks || []) {
      const tr = el("tr");
      tr.dataset.task = t.id;
      tr.appendChild(el("td", t.id, "id"));
      tr.appendChild(el("td", t.kind));
      tr.appendChild(el("td", t.started_by));
      tr.appendChild(el("td", t.reason, "reason"));
      tr.appendChild(el("td", t.state + (t.error ? ": " + t.error : ""), "state state-" + t.state));
      const pr = tr.appendChild(el("td"));
      pr.appendChild(progress(t.progress || 0, 1));
      pr.appendChild(document.createTextNode(` ${t.done}/${t.total} ${t.unit || ""}`));
      const j = t.jobs || {};
      tr.appendChild(el("td", `${j.published || 0} published, ${j.pending || 0} pending, ${j.failed || 0} failed`));
      const act = tr.appendChild(el("td"));
      if (isAdmin() && t.state === "running") {
        const b = act.appendChild(el("button", "Cancel", "cancel"));
        b.type = "button";
        b.addEventListener("click", () => cancelTask(t));
      }
      tb.appendChild(tr);
    }
    return running ? 1000 : 5000;
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
      tr.appendChild(el("td", e.job || "", "id"));
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
    // What a role may not do is not on its page (the server refuses it anyway).
    if (!session.can_purge) {
      $("purge").remove(); // a viewer sees no purge button
      $("viewer-note").hidden = false;
    } else {
      $("purge").addEventListener("click", purge);
    }
    if (!isAdmin()) {
      for (const o of document.querySelectorAll("#kind option.admin-only")) o.remove();
      $("task-forms").remove();
    } else {
      $("replay-submit").addEventListener("click", replay);
      $("resync-submit").addEventListener("click", resync);
    }
    $("preview").addEventListener("click", preview);
    for (const id of ["kind", "targets", "groups", "confirm", "reason"]) $(id).addEventListener("input", formChanged);
    $("audit-refresh").addEventListener("click", loadAudit);
    $("jobs-manual").addEventListener("change", loadJobs);
    formChanged();
    loadAudit();
    poll(loadHealth);
    poll(loadJobs);
    poll(loadApprovals);
    poll(loadTasks);
  }

  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/logout"); } catch (err) { /* gone already */ }
    location.replace("/");
  });
  start();
})();
