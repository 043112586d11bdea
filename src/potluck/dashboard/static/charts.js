/* potluck dashboard: formatting helpers and inline SVG charts (no library).
 *
 * Everything here builds DOM nodes from data; nothing is ever parsed as HTML, so a node name
 * or a log message cannot inject markup. Exposed as window.potluck.charts / .fmt / .h.
 */
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f7ed8", "#e4572e", "#2a9d4b", "#9b59d0", "#e0a000", "#17a2b8",
                   "#d6336c", "#8c6d31", "#5b6ee1", "#6c757d"];

  /** An HTML element: h("div", {class: "x", text: "hi"}, child, ...). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = value;
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  /** An SVG element with attributes. */
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") el.textContent = value;
      else el.setAttribute(key, String(value));
    }
    for (const child of children.flat()) if (child) el.append(child);
    return el;
  }

  const fmt = {
    num(v, digits) {
      if (v === null || v === undefined || !isFinite(v)) return "–";
      const d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
      return v.toLocaleString("en-US", {maximumFractionDigits: d, minimumFractionDigits: 0});
    },
    pct(v, digits) {
      return v === null || v === undefined ? "–" : fmt.num(100 * v, digits === undefined ? 0 : digits) + "%";
    },
    loss(v) {
      if (v === null || v === undefined) return "–";
      return Math.abs(v) >= 100 ? fmt.num(v, 1) : v.toPrecision(4);
    },
    duration(sec) {
      if (sec === null || sec === undefined || !isFinite(sec)) return "–";
      sec = Math.max(0, Math.round(sec));
      if (sec < 60) return sec + " s";
      const m = Math.floor(sec / 60), r = sec % 60;
      if (m < 60) return m + "m " + String(r).padStart(2, "0") + "s";
      const hr = Math.floor(m / 60);
      return hr + "h " + String(m % 60).padStart(2, "0") + "m";
    },
    age(sec) {
      if (sec === null || sec === undefined) return "–";
      return sec < 10 ? sec.toFixed(1) + " s ago" : fmt.duration(sec) + " ago";
    },
    bytes(b) {
      if (b === null || b === undefined) return "–";
      const gib = b / 2 ** 30;
      return gib >= 1 ? fmt.num(gib, 1) + " GiB" : fmt.num(b / 2 ** 20, 0) + " MiB";
    },
    ms(sec) {
      return sec === null || sec === undefined ? "–" : fmt.num(sec * 1000, sec < 0.01 ? 1 : 0) + " ms";
    },
    clock(t) {
      const d = new Date(t * 1000);
      return d.toLocaleTimeString("en-GB", {hour12: false});
    },
    date(t) {
      if (!t) return "–";
      const d = new Date(t * 1000);
      return d.toLocaleDateString("en-CA") + " " + d.toLocaleTimeString("en-GB", {hour12: false});
    },
  };

  /** A stable colour per node: by its position in `order` (slot order), else by name. */
  function colorFor(name, order) {
    let i = order ? order.indexOf(name) : -1;
    if (i < 0) {
      i = 0;
      for (const ch of String(name)) i = (i * 31 + ch.charCodeAt(0)) >>> 0;
    }
    return PALETTE[i % PALETTE.length];
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  const MARKER_SYMBOL = {join: "+", back: "+", leave: "−", lost: "×", rebalance: "⇄",
                         start: "▸", restart: "↺", end: "■"};

  /**
   * A line chart of values over time.
   * opts: {width, height, t: [unix s], series: [{name, color, values, width, cls}],
   *        markers: [{t, kind, label}], yMin, yMax, yFormat, label}
   */
  function lineChart(opts) {
    const width = Math.max(240, Math.floor(opts.width || 600));
    const height = opts.height || 180;
    const pad = {l: 52, r: 10, t: 16, b: 24};
    const t = opts.t || [];
    const svg = s("svg", {class: "chart", width, height, viewBox: `0 0 ${width} ${height}`,
                          role: "img", "aria-label": opts.label || "chart"});
    const all = [];
    for (const ser of opts.series) for (const v of ser.values) if (v !== null && isFinite(v)) all.push(v);
    const markers = (opts.markers || []).filter((m) => isFinite(m.t));
    let t0 = t.length ? t[0] : null, t1 = t.length ? t[t.length - 1] : null;
    for (const m of markers) {
      if (t0 === null || m.t < t0) t0 = m.t;
      if (t1 === null || m.t > t1) t1 = m.t;
    }
    if (t0 === null || !all.length) {
      svg.append(s("text", {x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle",
                            text: opts.empty || "no committed steps yet"}));
      return svg;
    }
    if (t1 - t0 < 1) t1 = t0 + 1;
    const yMin = opts.yMin !== undefined ? opts.yMin : Math.min(0, ...all);
    const yMax = opts.yMax !== undefined ? opts.yMax : niceMax(Math.max(...all));
    const X = (v) => pad.l + ((v - t0) / (t1 - t0)) * (width - pad.l - pad.r);
    const Y = (v) => pad.t + (1 - (v - yMin) / (yMax - yMin || 1)) * (height - pad.t - pad.b);
    const yFormat = opts.yFormat || ((v) => fmt.num(v));
    const grid = s("g", {class: "grid"});
    for (let i = 0; i <= 4; i++) {
      const v = yMin + ((yMax - yMin) * i) / 4;
      grid.append(s("line", {x1: pad.l, x2: width - pad.r, y1: Y(v), y2: Y(v)}));
      grid.append(s("text", {x: pad.l - 6, y: Y(v) + 4, "text-anchor": "end", text: yFormat(v)}));
    }
    const ticks = Math.max(2, Math.min(5, Math.floor((width - pad.l) / 110)));
    for (let i = 0; i < ticks; i++) {
      const v = t0 + ((t1 - t0) * i) / (ticks - 1);
      const anchor = i === 0 ? "start" : i === ticks - 1 ? "end" : "middle";
      grid.append(s("text", {x: X(v), y: height - 6, "text-anchor": anchor, text: fmt.clock(v)}));
    }
    svg.append(grid);
    const marks = s("g", {class: "markers"});
    let lastX = -Infinity, shift = 0;
    for (const m of markers.slice().sort((a, b) => a.t - b.t)) {
      const x = X(m.t);
      // Markers closer than a symbol's width: put the symbols side by side.
      shift = x - lastX < 10 ? shift + 10 : 0;
      lastX = x;
      const g = s("g", {class: "marker marker-" + m.kind, "data-kind": m.kind},
                  s("title", {text: fmt.clock(m.t) + " " + m.label}),
                  s("line", {x1: x, x2: x, y1: pad.t - 4, y2: height - pad.b}),
                  s("text", {x: x + shift, y: pad.t - 5, "text-anchor": "middle",
                             text: MARKER_SYMBOL[m.kind] || "•"}));
      marks.append(g);
    }
    svg.append(marks);
    // A pause (nothing committed for several bucket widths) is drawn as a gap.
    const steps = [];
    for (let i = 1; i < t.length; i++) steps.push(t[i] - t[i - 1]);
    steps.sort((a, b) => a - b);
    const gap = steps.length ? Math.max(5 * steps[Math.floor(steps.length / 2)], 10) : Infinity;
    for (const ser of opts.series) {
      let d = "", pen = false;
      ser.values.forEach((v, i) => {
        if (i > 0 && t[i] - t[i - 1] > gap) pen = false;
        if (v === null || !isFinite(v) || t[i] === undefined) { pen = false; return; }
        d += (pen ? "L" : "M") + X(t[i]).toFixed(1) + " " + Y(v).toFixed(1);
        pen = true;
      });
      if (!d) continue;
      const path = s("path", {d, fill: "none", stroke: ser.color, "stroke-width": ser.width || 1.8,
                              "stroke-linejoin": "round", class: ser.cls || "series",
                              "data-series": ser.name},
                     s("title", {text: ser.name}));
      svg.append(path);
      // A lone point (one bucket) is invisible as a path: draw it as a dot.
      if (!d.includes("L")) {
        const m = d.match(/M([\d.]+) ([\d.]+)/);
        svg.append(s("circle", {cx: m[1], cy: m[2], r: 2.5, fill: ser.color}));
      }
    }
    return svg;
  }

  /**
   * Horizontal bars split in parts: rows [{label, parts: [value...]}], parts [{name, cls}].
   */
  function splitBars(opts) {
    const width = Math.max(240, Math.floor(opts.width || 600));
    const rowH = 34, pad = {l: 0, r: 0, t: 4};
    const height = pad.t + rowH * opts.rows.length;
    const max = Math.max(1e-9, ...opts.rows.map((r) => r.parts.reduce((a, b) => a + b, 0)));
    const svg = s("svg", {class: "chart bars", width, height, viewBox: `0 0 ${width} ${height}`,
                          role: "img", "aria-label": opts.label || "bars"});
    opts.rows.forEach((row, i) => {
      const y = pad.t + i * rowH;
      const total = row.parts.reduce((a, b) => a + b, 0);
      svg.append(s("text", {x: 0, y: y + 10, class: "bar-label",
                            text: row.label + "  " + (opts.format || fmt.num)(total)}));
      let x = 0;
      const g = s("g", {class: "bar", "data-node": row.label});
      row.parts.forEach((v, j) => {
        const w = (v / max) * (width - pad.r);
        if (w > 0) {
          g.append(s("rect", {x, y: y + 14, width: Math.max(w, 0.5), height: 14,
                              class: "part " + opts.parts[j].cls, "data-part": opts.parts[j].cls},
                     s("title", {text: opts.parts[j].name + ": " + (opts.format || fmt.num)(v)})));
        }
        x += w;
      });
      svg.append(g);
    });
    return svg;
  }

  window.potluck = Object.assign(window.potluck || {}, {h, s, fmt, colorFor, charts: {lineChart, splitBars}});
})();
