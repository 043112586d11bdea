/* potluck dashboard: sign-in, the live stream, and switching views (docs/dashboard.md).
 *
 * Sign-in: the link `potluck host` prints carries the token in its fragment (#t=TOKEN), which
 * browsers never send to a server. This script removes it from the address bar at once,
 * posts it once in an Authorization header (POST /api/v1/session) and from then on relies on
 * the HttpOnly session cookie the answer sets. The token is never put in a URL.
 *
 * Data: one GET /api/v1/dashboard, then server-sent events from /api/v1/dashboard/stream:
 * `log` events (id = the log line's id; the browser resumes after the last one it saw when
 * it reconnects) and a `snapshot` event every second.
 */
"use strict";
(function () {
  const {h, fmt, views} = window.potluck;
  const VIEWS = ["cluster", "job", "stragglers", "network", "logs", "history"];
  const LOG_BACKLOG = 1000;
  const MAX_LOG_LINES = 5000;
  const $ = (id) => document.getElementById(id);

  const state = {snap: null, view: "cluster", logs: [], filter: "", historySel: null,
                 historyDetail: null, source: null, retry: null};

  // -- sign-in ---------------------------------------------------------------------------

  function showLogin(reason) {
    if (state.source) state.source.close();
    $("tabs").hidden = true;
    for (const v of VIEWS) $("view-" + v).hidden = true;
    $("login").hidden = false;
    $("login-reason").hidden = !reason;
    $("login-reason").textContent = reason || "";
    setConn("signed-out", "signed out");
  }

  /** Trade a token in the fragment for a session cookie. False if it was refused. */
  async function signIn() {
    const match = location.hash.match(/^#t=([^&]*)/);
    if (!match) return true;
    const token = decodeURIComponent(match[1]);
    // Out of the address bar (and the history) before anything else happens.
    history.replaceState(null, "", location.pathname + location.search);
    const resp = await fetch("/api/v1/session", {method: "POST", cache: "no-store",
      credentials: "same-origin", headers: {Authorization: "Bearer " + token}});
    if (!resp.ok) {
      showLogin(resp.status === 401 ? "The token in that link was refused: the host may have a new token. Use the link it prints now."
                                    : `Signing in failed (HTTP ${resp.status}).`);
      return false;
    }
    return true;
  }

  // -- connection ------------------------------------------------------------------------

  function setConn(kind, text) {
    const el = $("conn");
    el.dataset.state = kind;
    el.querySelector(".conn-text").textContent = text;
  }

  async function loadSnapshot() {
    const resp = await fetch("/api/v1/dashboard", {cache: "no-store", credentials: "same-origin"});
    if (resp.status === 401 || resp.status === 403) return null;
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    return resp.json();
  }

  function connect(after) {
    if (state.source) state.source.close();
    const source = new EventSource("/api/v1/dashboard/stream?after=" + after);
    state.source = source;
    source.addEventListener("open", () => setConn("live", "live"));
    source.addEventListener("log", (ev) => addLog(JSON.parse(ev.data)));
    source.addEventListener("snapshot", (ev) => {
      state.snap = JSON.parse(ev.data);
      render();
    });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) {
        setConn("retry", "reconnecting");
        return; // the browser reconnects by itself, sending Last-Event-ID
      }
      // Refused (the session ended?) or the host is gone: ask once, then try again.
      setConn("retry", "reconnecting");
      clearTimeout(state.retry);
      state.retry = setTimeout(async () => {
        try {
          const snap = await loadSnapshot();
          if (snap === null) { showLogin("Your session ended (sessions last a day, and end when the host restarts)."); return; }
          state.snap = snap;
          render();
          connect(lastLogId());
        } catch (e) {
          source.dispatchEvent(new Event("error"));
        }
      }, 3000);
    });
  }

  // -- logs ------------------------------------------------------------------------------

  function lastLogId() {
    return state.logs.length ? state.logs[state.logs.length - 1].id : Math.max(0, (state.snap ? state.snap.last_event_id : 0) - LOG_BACKLOG);
  }

  function logText(line) {
    return `${line.kind} ${line.job_id !== null ? "job " + line.job_id : ""} ${line.node || ""} ${line.message}`.toLowerCase();
  }

  function logItem(line) {
    return h("li", {"data-id": line.id, class: "log-" + line.kind},
      h("span", {class: "when", text: fmt.date(line.t)}),
      h("span", {class: "badge", text: line.kind}),
      line.job_id !== null ? h("span", {class: "muted", text: "job " + line.job_id}) : null,
      line.node ? h("span", {class: "node-ref", text: line.node}) : null,
      h("span", {class: "msg", text: line.message}));
  }

  function addLog(line) {
    state.logs.push(line);
    const list = $("log-lines");
    if (state.logs.length > MAX_LOG_LINES) {
      const gone = state.logs.shift();
      const first = list.firstElementChild;
      if (first && first.dataset.id === String(gone.id)) first.remove();
    }
    if (!state.filter || logText(line).includes(state.filter)) list.append(logItem(line));
    updateLogCount();
  }

  function renderLogs() {
    const list = $("log-lines");
    list.replaceChildren(...state.logs.filter((l) => !state.filter || logText(l).includes(state.filter)).map(logItem));
    updateLogCount();
  }

  function updateLogCount() {
    const shown = $("log-lines").childElementCount;
    $("log-count").textContent = state.filter ? `${shown} of ${state.logs.length} lines match` : `${state.logs.length} lines (newest last)`;
  }

  // -- views -----------------------------------------------------------------------------

  function order() {
    return state.snap ? state.snap.nodes.map((n) => n.name) : [];
  }

  function headline(snap) {
    const alive = snap.nodes.filter((n) => n.state === "alive").length;
    const parts = [`${alive}/${snap.nodes.length} nodes alive`];
    const job = snap.job;
    if (job && job.state === "running") {
      parts.push(`job ${job.id}: step ${job.step === null ? "–" : fmt.num(job.step + 1, 0)}` +
                 (job.total_steps ? "/" + fmt.num(job.total_steps, 0) : ""));
    } else parts.push("no job running");
    return parts.join(" · ");
  }

  async function selectJob(id) {
    state.historySel = id;
    render();
    const resp = await fetch(`/api/v1/dashboard/jobs/${id}`, {cache: "no-store", credentials: "same-origin"});
    if (!resp.ok || state.historySel !== id) return;
    state.historyDetail = await resp.json();
    renderHistoryDetail();
  }

  function renderHistoryDetail() {
    const el = $("history-detail");
    const job = state.historyDetail;
    if (!job || job.id !== state.historySel) { el.replaceChildren(); return; }
    const inner = h("div");
    el.replaceChildren(h("div", {class: "detail-tools"},
      h("a", {class: "button", href: `/api/v1/dashboard/jobs/${job.id}/steps.csv`, download: `potluck-job-${job.id}-steps.csv`, text: "Step data (CSV)"}),
      h("span", {class: "muted small"}, "A single-file report of it: ", h("code", {text: `potluck report ${job.id}`}))), inner);
    views.renderJob(inner, job, {order: order()});
  }

  function render() {
    const snap = state.snap;
    if (!snap) return;
    $("headline").textContent = headline(snap);
    const banner = $("banner");
    banner.hidden = !snap.storage_problem;
    banner.textContent = snap.storage_problem ? "The host cannot write its database: " + snap.storage_problem : "";
    const el = $("view-" + state.view);
    if (state.view === "cluster") views.renderCluster(el, snap);
    else if (state.view === "job") views.renderJob(el, snap.job, {order: order()});
    else if (state.view === "stragglers") views.renderStragglers(el, snap.job);
    else if (state.view === "network") views.renderNetwork(el, snap);
    else if (state.view === "history") views.renderHistory($("history-list"), snap, state.historySel, selectJob);
  }

  function show(view) {
    if (!VIEWS.includes(view)) view = "cluster";
    state.view = view;
    for (const v of VIEWS) $("view-" + v).hidden = v !== view;
    for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.view === view);
    if (view === "logs") renderLogs();
    if (view === "history") renderHistoryDetail();
    render();
  }

  function currentView() {
    const name = location.hash.replace(/^#/, "");
    return VIEWS.includes(name) ? name : "cluster";
  }

  // -- start -----------------------------------------------------------------------------

  async function start() {
    const view = currentView();
    if (!(await signIn())) return;
    let snap;
    try {
      snap = await loadSnapshot();
    } catch (e) {
      setConn("retry", "host unreachable");
      setTimeout(start, 3000);
      return;
    }
    if (snap === null) { showLogin(null); return; }
    state.snap = snap;
    $("login").hidden = true;
    $("tabs").hidden = false;
    show(view);
    connect(lastLogId());
  }

  window.addEventListener("hashchange", () => { if (!location.hash.startsWith("#t=")) show(currentView()); else start(); });
  let resizeTimer = null;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => { render(); renderHistoryDetail(); }, 150); });
  $("log-filter").addEventListener("input", (ev) => {
    state.filter = ev.target.value.trim().toLowerCase();
    const q = ev.target.value.trim();
    $("log-download").href = "/api/v1/dashboard/logs.txt" + (q ? "?q=" + encodeURIComponent(q) : "");
    renderLogs();
  });
  start();
})();
