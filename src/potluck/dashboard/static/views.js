/* potluck dashboard: the views, drawn from a snapshot or a job detail (docs/dashboard.md).
 *
 * Pure rendering: each function empties its container and fills it from data. Used by the
 * live page (app.js) and by the single-file report (`potluck report`).
 */
"use strict";
(function () {
  const {h, fmt, colorFor, charts} = window.potluck;

  const STATE_TEXT = {alive: "alive", lost: "lost", left: "left"};

  /** Text with `command` spans set as code. */
  function prose(tag, cls, text) {
    return h(tag, {class: cls}, text.split("`").map((part, i) => (i % 2 ? h("code", {text: part}) : part)));
  }

  function width(el) {
    return Math.max(260, Math.min(1100, (el.clientWidth || 600) - 2));
  }

  function stat(label, value, extra, attrs) {
    return h("div", Object.assign({class: "tile"}, attrs || {}),
             h("div", {class: "tile-label", text: label}),
             h("div", {class: "tile-value"}, value),
             extra ? h("div", {class: "tile-extra"}, extra) : null);
  }

  function bar(fraction, cls) {
    const fill = h("span", {class: "fill " + (cls || "")});
    fill.style.width = Math.max(0, Math.min(100, 100 * (fraction || 0))).toFixed(1) + "%";
    return h("span", {class: "meter"}, fill);
  }

  function fact(label, ...value) {
    return h("div", {class: "fact"}, h("span", {class: "fact-label", text: label}),
             h("span", {class: "fact-value"}, ...value));
  }

  // -- Cluster ---------------------------------------------------------------------------

  function devices(n) {
    const parts = n.gpus.map((g) => `${g.name} (${fmt.num(g.memory_mb / 1024, 0)} GiB)`);
    parts.push(`${n.cpu_cores} CPU cores`, `${fmt.num(n.memory_mb / 1024, 1)} GiB RAM`);
    return parts.join(" · ");
  }

  function versions(n) {
    const names = {python: "py", torch: "torch", torchft: "torchft", potluck: "potluck"};
    const out = [];
    for (const key of Object.keys(names)) {
      const bad = n.version_mismatch.includes(key);
      if (out.length) out.push(" · ");
      out.push(h("span", {class: bad ? "bad" : "", title: bad ? "differs from the host" : null},
                 `${names[key]} ${n.versions[key]}`));
    }
    out.push(" ");
    if (n.version_mismatch.length) out.push(h("span", {class: "badge bad", text: "mismatch"}));
    return out;
  }

  function meters(n) {
    const t = n.telemetry;
    if (!t) return null;
    const rows = [];
    if (t.cpu_percent !== null && t.cpu_percent !== undefined) {
      rows.push(h("div", {class: "gauge"}, h("span", {text: "CPU"}), bar(t.cpu_percent / 100),
                  h("span", {text: fmt.num(t.cpu_percent, 0) + "%"})));
    }
    if (t.memory_total_bytes) {
      rows.push(h("div", {class: "gauge"}, h("span", {text: "RAM"}),
                  bar(t.memory_used_bytes / t.memory_total_bytes),
                  h("span", {text: `${fmt.bytes(t.memory_used_bytes)} / ${fmt.bytes(t.memory_total_bytes)}`})));
    }
    for (const g of t.gpus) {
      const bits = [];
      if (g.memory_total_bytes) bits.push(`memory ${fmt.bytes(g.memory_used_bytes)} / ${fmt.bytes(g.memory_total_bytes)}`);
      if (g.temperature_c !== null) bits.push(fmt.num(g.temperature_c, 0) + " °C");
      if (g.power_w !== null) bits.push(fmt.num(g.power_w, 0) + " W");
      rows.push(h("div", {class: "gauge gpu"}, h("span", {text: "GPU " + g.index}),
                  bar((g.utilization_percent || 0) / 100, "gpu"),
                  h("span", {text: g.utilization_percent !== null ? fmt.num(g.utilization_percent, 0) + "%" : "–"}),
                  bits.length ? h("span", {class: "gauge-note", text: bits.join(" · ")}) : null));
    }
    return rows.length ? h("div", {class: "gauges"}, rows) : null;
  }

  function renderCluster(el, snap) {
    el.replaceChildren();
    const count = {alive: 0, lost: 0, left: 0};
    for (const n of snap.nodes) count[n.state] = (count[n.state] || 0) + 1;
    const gpus = snap.nodes.filter((n) => n.state === "alive").reduce((a, n) => a + n.gpus.length, 0);
    el.append(h("div", {class: "tiles"},
      stat("Nodes alive", String(count.alive), `${count.lost} lost · ${count.left} left`),
      stat("GPUs", String(gpus), "on alive nodes"),
      stat("Host", `${snap.host.advertise}:${snap.host.port}`,
           `potluck ${snap.host.versions.potluck} · torch ${snap.host.versions.torch}`, {class: "tile wide"})));
    if (!snap.nodes.length) {
      el.append(prose("p", "empty-note", "No machine has joined yet: run `potluck join HOST:PORT` on each friend's machine."));
      return;
    }
    const list = h("div", {class: "nodes"});
    const order = snap.nodes.map((n) => n.name);
    for (const n of snap.nodes) {
      const down = n.state !== "alive";
      const late = n.late && n.state !== "left";
      const net = [n.address, n.network, n.interface].filter(Boolean).join(" · ");
      const speed = n.measured_samples_per_s !== null ? fmt.num(n.measured_samples_per_s) + " samples/s" : "not measured yet";
      const shares = [];
      if (n.share !== null) shares.push(fmt.pct(n.share) + " of each batch");
      if (n.samples_fraction !== null) shares.push(fmt.pct(n.samples_fraction) + " of samples so far");
      list.append(h("article", {class: "node" + (down ? " down" : "") + (late ? " late" : ""),
                                "data-node": n.name, "data-state": n.state},
        h("header", {class: "node-head"},
          h("span", {class: "swatch"}),
          h("b", {class: "node-name", text: n.name}),
          h("span", {class: "badge state-" + n.state, text: STATE_TEXT[n.state] || n.state}),
          h("span", {class: "muted", text: "slot " + n.slot + (n.speed !== 1 ? ` · emulated ×${n.speed}` : "")})),
        h("div", {class: "facts"},
          fact("Devices", devices(n)),
          fact("System", n.os || "unknown"),
          fact("Address", net),
          fact("Heartbeat", h("span", {class: late ? "bad heartbeat" : "heartbeat", text: fmt.age(n.heartbeat_age_s)})),
          fact("Speed", speed),
          fact("Share", shares.length ? shares.join(" · ") : "not in a running job"),
          fact("Versions", ...versions(n))),
        down ? null : meters(n)));
      list.lastChild.querySelector(".swatch").style.background = colorFor(n.name, order);
    }
    el.append(list);
  }

  // -- Job ---------------------------------------------------------------------------------

  function legend(names, order) {
    return h("div", {class: "legend"},
      h("span", {class: "legend-item"}, h("span", {class: "swatch total"}), "cluster (total)"),
      names.map((name) => {
        const sw = h("span", {class: "swatch"});
        sw.style.background = colorFor(name, order);
        return h("span", {class: "legend-item"}, sw, name);
      }));
  }

  function chartCard(title, chart, note) {
    return h("section", {class: "card"}, h("h3", {text: title}), note ? h("p", {class: "muted small", text: note}) : null, chart);
  }

  const MARKER_TEXT = {join: "joined", back: "back", leave: "left", lost: "lost",
                       rebalance: "rebalance", start: "start", restart: "restart", end: "end"};

  function eventsList(job) {
    const markers = h("ul", {class: "events markers-list"});
    for (const m of job.markers.slice().reverse()) {
      markers.append(h("li", {class: "marker-" + m.kind, "data-kind": m.kind},
        h("span", {class: "when", text: fmt.clock(m.t)}),
        h("span", {class: "badge kind-" + m.kind, text: MARKER_TEXT[m.kind] || m.kind}),
        h("span", {class: "msg", text: m.label})));
    }
    const recent = h("ul", {class: "events"});
    for (const e of job.events.slice().reverse()) {
      recent.append(h("li", {}, h("span", {class: "when", text: fmt.clock(e.t)}),
                      h("span", {class: "badge", text: e.kind}), h("span", {class: "msg", text: e.message})));
    }
    return [
      h("section", {class: "card"}, h("h3", {text: "Join, leave and rebalance events"}),
        job.markers.length ? markers : h("p", {class: "muted", text: "none yet"})),
      h("section", {class: "card"}, h("h3", {text: "Recent job log"}),
        job.events.length ? recent : h("p", {class: "muted", text: "nothing logged yet"})),
    ];
  }

  function renderJob(el, job, ctx) {
    el.replaceChildren();
    if (!job) {
      el.append(prose("p", "empty-note", "No job yet: `potluck train` submits one."));
      return;
    }
    const order = ctx.order || Object.keys(job.series.node_share);
    const names = Object.keys(job.series.node_share).sort((a, b) => order.indexOf(a) - order.indexOf(b));
    const w = width(el);
    const progress = job.total_steps && job.step !== null ? (job.step + 1) / job.total_steps : null;
    const stepText = job.step === null ? "–" : fmt.num(job.step + 1, 0);
    el.append(h("div", {class: "job-head"},
      h("h2", {}, `Job ${job.id} `, h("span", {class: "job-name", text: job.name})),
      h("span", {class: "badge state-" + job.state, "data-testid": "job-state", text: job.state}),
      h("span", {class: "muted", text: `${job.model} · batch ${job.global_batch} · ${job.policy} · ${job.sync}`})));
    if (job.message) el.append(h("p", {class: "muted small", text: job.message}));
    el.append(h("div", {class: "tiles"},
      stat("Steps", h("span", {}, h("span", {"data-testid": "step", text: stepText}),
                      job.total_steps ? h("span", {class: "muted", text: " / " + fmt.num(job.total_steps, 0)}) : null),
           progress !== null ? bar(progress) : null),
      stat("ETA", job.state === "running" ? fmt.duration(job.eta_s) : job.state,
           job.started_at ? "started " + fmt.clock(job.started_at) : null),
      stat("Loss", fmt.loss(job.loss)),
      stat("Samples/s", fmt.num(job.samples_per_s), job.participants !== null ? `${job.participants} node(s) in the step` : null),
      stat("Efficiency", fmt.pct(job.efficiency), "of the members' summed speed"),
      stat("Compute", fmt.pct(job.compute_fraction), "of step time (rest: comm, waiting)")));
    if (job.restarts) el.append(h("p", {class: "bad", text: `Training restarted ${job.restarts} time(s) after every replica was lost.`}));
    const ser = job.series;
    el.append(legend(names, order));
    const totalSeries = {name: "cluster", color: "currentColor", values: ser.samples_per_s, width: 2.6, cls: "series total"};
    const tput = charts.lineChart({
      width: w, t: ser.t, markers: job.markers, label: "throughput per node and total",
      series: [totalSeries, ...names.map((n) => ({name: n, color: colorFor(n, order), values: ser.node_samples_per_s[n]}))],
    });
    el.append(chartCard("Throughput (samples/s): cluster and each node", tput));
    el.append(chartCard("Share of the global batch", charts.lineChart({
      width: w, t: ser.t, markers: job.markers, yMin: 0, yMax: 1, label: "share per node",
      yFormat: (v) => fmt.pct(v), series: names.map((n) => ({name: n, color: colorFor(n, order), values: ser.node_share[n]})),
    })));
    el.append(chartCard("Loss", charts.lineChart({
      width: w, t: ser.t, markers: job.markers, label: "loss",
      yFormat: (v) => fmt.num(v, 3), series: [{name: "loss", color: "currentColor", values: ser.loss, cls: "series total"}],
    })));
    const totalSamples = Object.values(job.node_samples).reduce((a, b) => a + b, 0);
    if (totalSamples) {
      const rows = h("div", {class: "share-rows"});
      for (const n of names.concat(Object.keys(job.node_samples).filter((x) => !names.includes(x)))) {
        const count = job.node_samples[n] || 0;
        const b = bar(count / totalSamples);
        b.firstChild.style.background = colorFor(n, order);
        rows.append(h("div", {class: "gauge"}, h("span", {text: n}), b,
                      h("span", {text: `${fmt.pct(count / totalSamples, 1)} · ${fmt.num(count, 0)}`})));
      }
      el.append(chartCard("Samples computed so far", rows));
    }
    el.append(...eventsList(job));
  }

  // -- Stragglers ------------------------------------------------------------------------

  const PARTS = [{name: "compute", cls: "compute"}, {name: "communication", cls: "comm"},
                 {name: "waiting for slower nodes", cls: "wait"}, {name: "quorum, commit, data", cls: "other"}];

  function renderStragglers(el, job) {
    el.replaceChildren();
    el.append(h("p", {class: "muted", text: "Where each node's step time goes, averaged over its last 50 committed steps. " +
      "Waiting is time a node sat idle because a slower member was still computing; the node with the longest compute " +
      "and no waiting is the straggler the balancer shrinks."}));
    if (!job || !job.stragglers.length) {
      el.append(h("p", {class: "empty-note", text: "No committed steps with timings yet."}));
      return;
    }
    const slowest = job.stragglers.reduce((a, b) => (b.compute_s > a.compute_s ? b : a));
    el.append(h("div", {class: "legend"}, PARTS.map((p) => h("span", {class: "legend-item"}, h("span", {class: "swatch part " + p.cls}), p.name))));
    const rows = job.stragglers.map((r) => ({label: r.node + (r === slowest && job.stragglers.length > 1 ? " (slowest)" : ""),
                                               parts: [r.compute_s, r.comm_s, r.wait_s, r.other_s]}));
    el.append(h("section", {class: "card"}, charts.splitBars({width: width(el), rows, parts: PARTS, format: fmt.ms, label: "step time per node"})));
    const table = h("table", {class: "grid-table"},
      h("thead", {}, h("tr", {}, ["node", "compute", "comm", "wait", "other"].map((c) => h("th", {text: c})))),
      h("tbody", {}, job.stragglers.map((r) => h("tr", {class: r === slowest ? "slowest" : "", title: `mean of ${r.steps} steps`},
        h("td", {text: r.node}), h("td", {text: fmt.ms(r.compute_s)}), h("td", {text: fmt.ms(r.comm_s)}),
        h("td", {text: fmt.ms(r.wait_s)}), h("td", {text: fmt.ms(r.other_s)})))));
    el.append(h("section", {class: "card"}, h("div", {class: "scroll-x"}, table)));
  }

  // -- Network ---------------------------------------------------------------------------

  function renderNetwork(el, snap) {
    el.replaceChildren();
    const links = snap.links;
    el.append(prose("p", "muted", "Latency and bandwidth between every pair of nodes, as `potluck doctor --cluster` last measured them (row: from, column: to)."));
    if (!links.length) {
      el.append(prose("p", "empty-note", "No measurements yet: run `potluck doctor --cluster` on the host."));
      return;
    }
    const names = [...new Set(links.flatMap((l) => [l.source, l.target]))].sort();
    const key = (a, b) => a + "\u0000" + b;
    const byPair = new Map(links.map((l) => [key(l.source, l.target), l]));
    const measured = links.filter((l) => l.status !== "fail" && l.rtt_ms !== null);
    const slowRtt = measured.reduce((a, b) => (a && a.rtt_ms >= b.rtt_ms ? a : b), null);
    const withBw = links.filter((l) => l.mbit_s !== null);
    const slowBw = withBw.reduce((a, b) => (a && a.mbit_s <= b.mbit_s ? a : b), null);
    const table = h("table", {class: "matrix"});
    table.append(h("thead", {}, h("tr", {}, h("th", {text: "from \\ to"}), names.map((n) => h("th", {text: n})))));
    const body = h("tbody");
    for (const a of names) {
      const tr = h("tr", {}, h("th", {text: a}));
      for (const b of names) {
        const l = byPair.get(key(a, b));
        if (a === b || !l) { tr.append(h("td", {class: "none", text: a === b ? "" : "–"})); continue; }
        const slow = l === slowRtt || l === slowBw;
        tr.append(h("td", {class: "link status-" + l.status + (slow ? " slowest" : ""), title: l.summary,
                           "data-link": `${a}>${b}`},
          h("div", {text: l.rtt_ms !== null ? fmt.num(l.rtt_ms, 1) + " ms" : l.status}),
          h("div", {class: "small", text: l.mbit_s !== null ? fmt.num(l.mbit_s, 0) + " Mbit/s" : ""}),
          slow ? h("div", {class: "small slow-tag", text: "slowest"}) : null));
      }
      body.append(tr);
    }
    table.append(body);
    el.append(h("section", {class: "card"}, h("div", {class: "scroll-x"}, table)));
    const list = h("ul", {class: "events"});
    const ranked = links.slice().sort((x, y) => (y.rtt_ms || 1e9) - (x.rtt_ms || 1e9));
    for (const l of ranked) {
      list.append(h("li", {class: "status-" + l.status},
        h("span", {class: "badge status-" + l.status, text: l.status}),
        h("span", {class: "msg", text: `${l.source} → ${l.target}: ${l.summary}`}),
        h("span", {class: "when", text: fmt.date(l.measured_at)})));
    }
    el.append(h("section", {class: "card"}, h("h3", {text: "Each direction, slowest first"}), list));
  }

  // -- History ---------------------------------------------------------------------------

  function jobLine(j, onSelect, selected) {
    const sm = j.summary;
    const bits = [j.model];
    if (sm) {
      bits.push(`${fmt.num(sm.steps, 0)} steps`);
      if (sm.samples_per_s !== null) bits.push(`${fmt.num(sm.samples_per_s)} samples/s`);
      if (sm.final_loss !== null) bits.push(`loss ${fmt.loss(sm.final_loss)}`);
      if (sm.test_accuracy !== null) bits.push(`accuracy ${fmt.pct(sm.test_accuracy, 1)}`);
      if (sm.compute_fraction !== null) bits.push(`compute ${fmt.pct(sm.compute_fraction)}`);
      bits.push(`${sm.nodes.length} node(s)`);
    }
    if (j.started_at && j.finished_at) bits.push(fmt.duration(j.finished_at - j.started_at));
    return h("button", {class: "job-line" + (selected ? " selected" : ""), "data-job": j.id, type: "button",
                        on: {click: () => onSelect(j.id)}},
      h("span", {class: "job-title"}, h("b", {text: `#${j.id} ${j.name}`}), " ",
        h("span", {class: "badge state-" + j.state, text: j.state})),
      h("span", {class: "muted small", text: bits.join(" · ")}),
      h("span", {class: "muted small", text: fmt.date(j.created_at)}));
  }

  function renderHistory(el, snap, selected, onSelect) {
    el.replaceChildren();
    if (snap.queued.length) {
      el.append(h("h3", {text: "Queued"}), h("div", {class: "job-list"}, snap.queued.map((j) => jobLine(j, onSelect, false))));
    }
    el.append(h("h3", {text: "Finished jobs"}));
    if (!snap.history.length) {
      el.append(h("p", {class: "empty-note", text: "No finished job yet."}));
      return;
    }
    el.append(h("div", {class: "job-list"}, snap.history.map((j) => jobLine(j, onSelect, j.id === selected))));
  }

  window.potluck.views = {renderCluster, renderJob, renderStragglers, renderNetwork, renderHistory};
})();
