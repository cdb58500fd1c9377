/* Argus's monitoring console (service/ui.py serves it).
 *
 * Refreshes the overview and draws the model and versions pages from the JSON routes
 * (/models, /monitoring, /monitoring/history, /monitoring/feature, /monitoring/scores,
 * /monitoring/compare, /models/card): it computes no figure of its own. Every figure is
 * marked data-figure="<its path in /monitoring's JSON>" (data-history for a history
 * point's) with data-value="<the exact number>". Every string from the data is set as
 * text (textContent, createTextNode, setAttribute), never parsed as markup. Charts are
 * inline SVG drawn here.
 */
"use strict";
(() => {
  const SVGNS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 3000;
  const MODEL = document.body.dataset.model;
  document.documentElement.classList.add("js");

  // -- DOM ---------------------------------------------------------------------------

  function put(node, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) node.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const h = (tag, attrs, ...kids) => put(document.createElement(tag), attrs, kids);
  const s = (tag, attrs, ...kids) => put(document.createElementNS(SVGNS, tag), attrs, kids);
  const byId = (id) => document.getElementById(id);
  function fill(node, ...kids) {
    node.replaceChildren();
    return put(node, null, kids);
  }
  const note = (text) => h("p", { class: "note" }, text);

  // -- figures -------------------------------------------------------------------------

  const FORMATS = {
    pct1: (v) => (v * 100).toFixed(1) + "%",
    pct2: (v) => (v * 100).toFixed(2) + "%",
    f1: (v) => v.toFixed(1),
    f3: (v) => v.toFixed(3),
    f4: (v) => v.toFixed(4),
    int: (v) => v.toFixed(0),
    p: (v) => (v === 0 ? "0" : Math.abs(v) < 0.001 ? v.toExponential(1) : v.toFixed(3)),
    bool: (v) => (v ? "yes" : "no"),
  };

  function valueAt(doc, path) {
    let v = doc;
    for (const key of path.split(".")) {
      if (v === null || v === undefined) return null;
      v = Array.isArray(v) ? v[Number(key)] : v[key];
    }
    return v === undefined ? null : v;
  }
  function show(node, v, fmt) {
    const ok = typeof v === "boolean" || (typeof v === "number" && Number.isFinite(v));
    node.setAttribute("data-value", ok ? String(v) : "");
    node.textContent = ok ? FORMATS[fmt](v) : "—";
    return node;
  }
  /** A figure: its path in the document, its exact value, its text. */
  function fig(doc, path, fmt, attr = "data-figure", make = h, tag = "span") {
    const node = make(tag, { class: "fig", [attr]: path, "data-fmt": fmt });
    return show(node, valueAt(doc, path), fmt);
  }
  const sfig = (doc, path, fmt) => fig(doc, path, fmt, "data-figure", s, "tspan");
  function refresh(root, doc, attr = "data-figure") {
    for (const node of root.querySelectorAll(`[${attr}]`)) {
      show(node, valueAt(doc, node.getAttribute(attr)), node.dataset.fmt);
    }
  }

  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  const maxOf = (xs) => xs.reduce((a, b) => (b > a ? b : a), -Infinity);
  const minOf = (xs) => xs.reduce((a, b) => (b < a ? b : a), Infinity);
  const pad2 = (n) => String(n).padStart(2, "0");
  function clock(t, seconds = true) {
    const d = new Date(t * 1000);
    const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    return seconds ? `${hm}:${pad2(d.getSeconds())}` : hm;
  }
  function when(t) {
    const d = new Date(t * 1000);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clock(t)}`;
  }
  function compact(v) {
    if (!Number.isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 0.01 || a >= 1e5)) return v.toExponential(1);
    return String(Number(v.toPrecision(3)));
  }
  const short = (version) => (version ? String(version).slice(0, 8) : "none");

  // -- requests ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  async function api(path, params) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined) query.set(k, String(v));
    }
    const url = query.toString() ? `${path}?${query}` : path;
    const r = await fetch(url, { cache: "no-store", headers: { accept: "application/json" } });
    const doc = await r.json().catch(() => null);
    if (!r.ok) throw new ApiError(r.status, (doc && doc.error) || `${r.status} ${r.statusText}`);
    return doc;
  }
  function status(text, bad = false) {
    const node = byId("status");
    if (!node) return;
    node.textContent = text;
    node.classList.toggle("bad", bad);
  }
  /** Run ``work`` now and then every ``ms``; never two at once. Returns "run now". */
  function every(ms, work) {
    let timer = null;
    let busy = false;
    let again = false;
    async function run() {
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      clearTimeout(timer);
      try {
        if (!document.hidden) await work();
        status(`updated ${clock(Date.now() / 1000)}`);
      } catch (err) {
        status(`refresh failed: ${err.message}`, true);
      }
      busy = false;
      if (again) {
        again = false;
        run();
      } else {
        timer = setTimeout(run, ms);
      }
    }
    run();
    return run;
  }

  // -- charts ----------------------------------------------------------------------

  function niceStep(raw) {
    const p = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }
  function domain(lo, hi, ratio) {
    if (ratio) {
      const pad = Math.max((hi - lo) * 0.1, 0.01);
      lo = Math.max(0, lo - pad);
      hi = Math.min(1, hi + pad);
    } else if (hi === lo) {
      hi = lo + 1;
    }
    const step = niceStep((hi - lo) / 4 || 0.01);
    lo = Math.floor(lo / step + 1e-9) * step;
    hi = Math.ceil(hi / step - 1e-9) * step;
    if (ratio) [lo, hi] = [Math.max(0, lo), Math.min(1, hi)];
    const ticks = [];
    for (let v = lo; v <= hi + step / 1e6; v += step) ticks.push(v);
    return { lo, hi: hi > lo ? hi : lo + step, ticks };
  }
  const tickText = (v, ratio) =>
    ratio ? `${Number((v * 100).toFixed(1))}%` : compact(Number(v.toPrecision(6)));
  function width(box) {
    return Math.max(260, Math.round(box.clientWidth || 560));
  }
  function legend(items) {
    return h(
      "div",
      { class: "legend" },
      items.map((it) => h("span", { class: "key" }, h("i", { class: `swatch ${it.cls}` }), it.name))
    );
  }
  function svgRoot(w, ht, label) {
    return s("svg", {
      viewBox: `0 0 ${w} ${ht}`,
      width: w,
      height: ht,
      class: "plot",
      role: "img",
      "aria-label": label,
    });
  }

  /** Lines over time: series [{name, cls, points: [[t, v|null]]}], events [{t, ...}]. */
  function lineChart(box, { series, events, x0, x1, ratio, label }) {
    const values = series.flatMap((se) => se.points.map((p) => p[1]).filter((v) => v !== null));
    if (!values.length) {
      fill(box, note("No history points yet (one every ARGUS_HISTORY_SECONDS)."));
      return;
    }
    const W = width(box);
    const H = 200;
    const m = { l: 48, r: 12, t: 22, b: 24 };
    const { lo, hi, ticks } = domain(minOf(values), maxOf(values), ratio);
    if (x1 <= x0) x1 = x0 + 1;
    const X = (t) => m.l + ((t - x0) / (x1 - x0)) * (W - m.l - m.r);
    const Y = (v) => H - m.b - ((v - lo) / (hi - lo)) * (H - m.t - m.b);
    const g = svgRoot(W, H, label);
    for (const v of ticks) {
      g.append(
        s("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: "grid" }),
        s("text", { x: m.l - 6, y: Y(v) + 4, class: "tick", "text-anchor": "end" }, tickText(v, ratio))
      );
    }
    const span = x1 - x0;
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
    const step = steps.find((st) => span / st <= Math.max(2, (W - m.l) / 90)) || 86400 * 7;
    for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) {
      g.append(
        s("line", { x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4, class: "axis" }),
        s("text", { x: X(t), y: H - 6, class: "tick", "text-anchor": "middle" }, clock(t, step < 60))
      );
    }
    g.append(s("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis" }));
    for (const ev of events) {
      if (ev.t < x0 || ev.t > x1) continue;
      const x = X(ev.t);
      const right = x > W - 110;
      g.append(
        s(
          "line",
          { x1: x, x2: x, y1: m.t - 6, y2: H - m.b, class: "event", "data-event": ev.reason },
          s("title", null, `${ev.reason}: ${ev.version} live (was ${ev.previous || "none"}) at ${when(ev.t)}`)
        ),
        s(
          "text",
          { x: right ? x - 4 : x + 4, y: m.t - 8, class: "event-label", "text-anchor": right ? "end" : "start" },
          `${ev.reason} → ${short(ev.version)}`
        )
      );
    }
    for (const se of series) {
      let d = "";
      let pen = false;
      let last = null;
      for (const [t, v] of se.points) {
        if (v === null) {
          pen = false;
          continue;
        }
        d += `${pen ? "L" : "M"}${X(t).toFixed(1)} ${Y(v).toFixed(1)}`;
        pen = true;
        last = [t, v];
      }
      if (d) g.append(s("path", { d, class: `line ${se.cls}` }));
      if (last) g.append(s("circle", { cx: X(last[0]), cy: Y(last[1]), r: 3, class: `dot ${se.cls}` }));
    }
    fill(box, g, legend(series));
  }

  /** Vertical bars with a value axis: bars [{x0, x1, v, cls, title}]. */
  function barAxes(W, H, m, top, ratio, label) {
    const { hi, ticks } = domain(0, top || 1, ratio);
    const Y = (v) => H - m.b - (v / hi) * (H - m.t - m.b);
    const g = svgRoot(W, H, label);
    for (const v of ticks) {
      g.append(
        s("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: "grid" }),
        s("text", { x: m.l - 6, y: Y(v) + 4, class: "tick", "text-anchor": "end" }, tickText(v, ratio))
      );
    }
    g.append(s("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis" }));
    return { g, Y };
  }

  /** A feature's input window on the reference's bins, beside the reference. */
  function featureChart(box, doc) {
    const ref = doc.reference_counts;
    const cur = doc.current_counts;
    const k = ref.length;
    const edges = doc.edges;
    const rShare = ref.map((c) => c / (sum(ref) || 1));
    const cShare = cur ? cur.map((c) => c / (sum(cur) || 1)) : [];
    const W = width(box);
    const H = 230;
    const m = { l: 48, r: 12, t: 10, b: 40 };
    const { g, Y } = barAxes(W, H, m, maxOf([...rShare, ...cShare]), true, `histogram of ${doc.name}`);
    const slot = (W - m.l - m.r) / k;
    const bin = (i) =>
      i === 0 ? `≤ ${compact(edges[0])}` : i === k - 1 ? `> ${compact(edges[k - 2])}` : `(${compact(edges[i - 1])}, ${compact(edges[i])}]`;
    for (let i = 0; i < k; i++) {
      const x = m.l + i * slot;
      const bw = Math.max(1, slot * 0.4);
      g.append(
        s(
          "rect",
          { x: x + slot * 0.08, y: Y(rShare[i]), width: bw, height: Y(0) - Y(rShare[i]), class: "bar ref" },
          s("title", null, `reference ${bin(i)}: ${ref[i]} rows (${(rShare[i] * 100).toFixed(1)}%)`)
        )
      );
      if (cur) {
        g.append(
          s(
            "rect",
            { x: x + slot * 0.52, y: Y(cShare[i]), width: bw, height: Y(0) - Y(cShare[i]), class: "bar cur" },
            s("title", null, `current ${bin(i)}: ${cur[i]} rows (${(cShare[i] * 100).toFixed(1)}%)`)
          )
        );
      }
    }
    const every = Math.max(1, Math.ceil((k - 1) / Math.max(1, Math.floor((W - m.l) / 48))));
    for (let i = 0; i < k - 1; i += every) {
      const x = m.l + (i + 1) * slot;
      g.append(
        s("line", { x1: x, x2: x, y1: H - m.b, y2: H - m.b + 4, class: "axis" }),
        s("text", { x, y: H - m.b + 16, class: "tick", "text-anchor": "middle" }, compact(edges[i]))
      );
    }
    g.append(s("text", { x: (W + m.l) / 2, y: H - 4, class: "axis-label", "text-anchor": "middle" }, "reference bin edges"));
    const items = [{ name: `reference (${sum(ref)} rows)`, cls: "ref" }];
    if (cur) items.push({ name: `current window (${doc.rows} rows)`, cls: "cur" });
    fill(box, g, legend(items), cur ? null : note("No rows in the input window yet."));
    box.setAttribute("data-feature", doc.index);
  }

  /** The input window's anomaly scores, with the threshold. */
  function scoresChart(box, doc, mon) {
    const quantiles = h(
      "p",
      { class: "note" },
      "Anomalous share ",
      fig(mon, "anomaly.ratio", "pct2"),
      " · threshold ",
      fig(mon, "anomaly.threshold", "f1"),
      " · score p50 ",
      fig(mon, "anomaly.score_quantiles.p50", "f1"),
      ", p90 ",
      fig(mon, "anomaly.score_quantiles.p90", "f1"),
      ", p99 ",
      fig(mon, "anomaly.score_quantiles.p99", "f1")
    );
    if (!doc || !doc.rows) {
      fill(box, note("No rows in the input window yet."), quantiles);
      return;
    }
    const { edges, counts, threshold } = doc;
    const W = width(box);
    const H = 200;
    const m = { l: 48, r: 12, t: 18, b: 24 };
    const total = sum(counts) || 1;
    const shares = counts.map((c) => c / total);
    const { g, Y } = barAxes(W, H, m, maxOf(shares), true, "anomaly score histogram");
    const a = edges[0];
    const b = edges[edges.length - 1];
    const X = (v) => m.l + ((v - a) / (b - a || 1)) * (W - m.l - m.r);
    shares.forEach((v, i) => {
      const over = edges[i] >= threshold;
      const last = i === counts.length - 1 ? " and above" : "";
      g.append(
        s(
          "rect",
          { x: X(edges[i]) + 0.5, y: Y(v), width: Math.max(1, X(edges[i + 1]) - X(edges[i]) - 1), height: Y(0) - Y(v), class: over ? "bar over" : "bar score" },
          s("title", null, `scores ${compact(edges[i])}–${compact(edges[i + 1])}${last}: ${counts[i]} rows`)
        )
      );
    });
    const step = niceStep((b - a) / Math.max(2, Math.floor((W - m.l) / 80)));
    for (let v = Math.ceil(a / step) * step; v <= b; v += step) {
      g.append(s("text", { x: X(v), y: H - 6, class: "tick", "text-anchor": "middle" }, compact(v)));
    }
    const tx = X(threshold);
    g.append(
      s("line", { x1: tx, x2: tx, y1: m.t - 6, y2: H - m.b, class: "threshold" }),
      s("text", { x: tx - 4, y: m.t - 8, class: "threshold-label", "text-anchor": "end" }, `threshold ${compact(threshold)}`)
    );
    fill(box, g, legend([{ name: "below threshold", cls: "score" }, { name: "anomalous", cls: "over" }]), quantiles);
  }

  /** Horizontal bars: rows [{label, v, path, fmt, unit, title}] on [0, top]. */
  function hbars(box, rows, top, label, cls) {
    const W = width(box);
    const row = 22;
    const m = { l: 56, r: 70, t: 6, b: 6 };
    const H = m.t + m.b + rows.length * row;
    const g = svgRoot(W, H, label);
    const X = (v) => m.l + (Math.max(0, v) / (top || 1)) * (W - m.l - m.r);
    rows.forEach((r, i) => {
      const y = m.t + i * row;
      const v = Number.isFinite(r.v) ? r.v : 0;
      const value = s("text", { x: X(v) + 6, y: y + 15, class: "val" }, sfig(r.doc, r.path, r.fmt), r.unit || "");
      g.append(
        s("text", { x: m.l - 8, y: y + 15, class: "tick", "text-anchor": "end" }, r.label),
        s("rect", { x: m.l, y: y + 3, width: Math.max(0, X(v) - m.l), height: row - 7, class: `bar ${cls}` }, s("title", null, r.title || "")),
        value
      );
    });
    fill(box, g);
  }

  function delayChart(box, mon) {
    const q = mon.label_delay_seconds;
    if (!q) {
      fill(box, note("No labels in the window yet."));
      return;
    }
    const rows = ["p50", "p90", "p99"].map((k) => ({
      label: k,
      v: q[k],
      doc: mon,
      path: `label_delay_seconds.${k}`,
      fmt: "f1",
      unit: " s",
      title: `${k} of the seconds between a prediction and its label: ${q[k]}`,
    }));
    hbars(box, rows, maxOf(rows.map((r) => r.v)), "label delay quantiles", "delay");
    box.append(note("Seconds from a prediction to its label, over the labelled window."));
  }

  function f1Chart(box, mon) {
    const p = mon.performance;
    if (!p) {
      fill(box, note("No labelled predictions in the window yet."));
      return;
    }
    const rows = p.labels.map((label, i) => ({
      label: `class ${label}`,
      v: p.f1[i],
      doc: mon,
      path: `performance.f1.${i}`,
      fmt: "f3",
      title: `class ${label}: precision ${FORMATS.f3(p.precision[i])}, recall ${FORMATS.f3(p.recall[i])}, support ${p.support[i]}`,
    }));
    hbars(box, rows, 1, "F1 by class", "f1");
    box.append(h("p", { class: "note" }, "Macro F1 ", fig(mon, "performance.macro_f1", "f3"), " over ", fig(mon, "windows.labels", "int"), " labelled rows."));
  }

  function confusionChart(box, mon) {
    const p = mon.performance;
    if (!p) {
      fill(box, note("No labelled predictions in the window yet."));
      return;
    }
    const n = p.labels.length;
    const W = width(box);
    const m = { l: 46, t: 34 };
    const cell = Math.max(8, Math.min(44, Math.floor((W - m.l - 8) / n)));
    const size = cell * n;
    const g = svgRoot(m.l + size + 8, m.t + size + 8, "confusion matrix");
    g.append(
      s("text", { x: m.l + size / 2, y: 11, class: "axis-label", "text-anchor": "middle" }, "predicted"),
      s("text", { x: 10, y: m.t + size / 2, class: "axis-label", "text-anchor": "middle", transform: `rotate(-90 10 ${m.t + size / 2})` }, "true")
    );
    const labels = cell >= 14;
    p.labels.forEach((label, i) => {
      if (!labels) return;
      g.append(
        s("text", { x: m.l + i * cell + cell / 2, y: m.t - 6, class: "tick", "text-anchor": "middle" }, label),
        s("text", { x: m.l - 6, y: m.t + i * cell + cell / 2 + 4, class: "tick", "text-anchor": "end" }, label)
      );
    });
    p.confusion.forEach((counts, i) => {
      const total = sum(counts);
      counts.forEach((c, j) => {
        const share = total ? c / total : 0;
        const x = m.l + j * cell;
        const y = m.t + i * cell;
        g.append(
          s(
            "rect",
            { x, y, width: cell - 1, height: cell - 1, class: i === j ? "cm hit" : "cm miss", "fill-opacity": c ? (0.12 + 0.88 * share).toFixed(3) : 0.04 },
            s("title", null, `true ${p.labels[i]}, predicted ${p.labels[j]}: ${c} (${(share * 100).toFixed(1)}% of true ${p.labels[i]})`)
          )
        );
        if (cell >= 16 && n <= 30) {
          g.append(
            s("text", { x: x + cell / 2, y: y + cell / 2 + 4, class: share > 0.5 ? "cm-text light" : "cm-text", "text-anchor": "middle" }, sfig(mon, `performance.confusion.${i}.${j}`, "int"))
          );
        }
      });
    });
    fill(box, g, note("Rows: true class; columns: predicted; shade: share of the row."));
  }

  // -- overview ----------------------------------------------------------------------

  function candidateText(c) {
    if (!c) return ["—"];
    return [`${c.role} `, h("code", null, c.version), ` · ${Number((c.share * 100).toFixed(2))}%`];
  }

  function overviewPage() {
    const rows = [...document.querySelectorAll("tr[data-model]")];
    const shown = new Set(rows.map((r) => r.dataset.model));
    let reloaded = false;
    every(REFRESH_MS, async () => {
      await Promise.all(
        rows.map(async (row) => {
          const name = row.dataset.model;
          const models = await api("/models", { model: name });
          if (!reloaded && models.models.some((m) => !shown.has(m))) {
            reloaded = true; // a model was added: render the table again
            setTimeout(() => location.reload(), 100);
          }
          const ready = models.serving !== null;
          const health = row.querySelector("[data-health]");
          health.textContent = ready ? "ready" : "not ready";
          health.className = `badge ${ready ? "ok" : "bad"}`;
          health.dataset.health = ready ? "ready" : "not-ready";
          row.querySelector("[data-live-version]").textContent = models.live || "—";
          fill(row.querySelector("[data-candidate]"), candidateText(models.candidate));
          const mon = ready ? await api("/monitoring", { model: name }) : null;
          refresh(row, mon);
          let point = null;
          if (mon && models.live) {
            const since = mon.generated_at - 60;
            const hist = await api("/monitoring/history", { model: name, version: models.live, since });
            point = hist.points.length ? hist.points[hist.points.length - 1] : null;
          }
          refresh(row, point, "data-history");
        })
      );
    });
  }

  // -- a model's page ------------------------------------------------------------------

  const KPIS = [
    ["Accuracy", "performance.accuracy", "pct2", [["on ", "windows.labels", "int"], [" labelled rows"]]],
    ["Estimated accuracy", "estimated_accuracy", "pct2", [["label-free, on ", "windows.inputs", "int"], [" rows"]]],
    ["Macro F1", "performance.macro_f1", "f3", [["precision ", "performance.macro_precision", "f3"], [", recall ", "performance.macro_recall", "f3"]]],
    ["Label coverage", "label_coverage", "pct1", [["", "totals.labelled", "int"], [" of "], ["", "totals.predictions", "int"], [" predictions"]]],
    ["Drift share", "drift.drift_share", "pct1", [["detected: ", "drift.drift_detected", "bool"]]],
    ["Multivariate drift", "multivariate_drift.effect", "f3", [["p ", "multivariate_drift.p_value", "p"], [", detected: ", "multivariate_drift.detected", "bool"]]],
    ["Prediction drift", "prediction_drift.class_psi", "f3", [["class PSI; χ² p ", "prediction_drift.chi2_pvalue", "p"]]],
    ["Anomalies", "anomaly.ratio", "pct2", [["threshold ", "anomaly.threshold", "f1"]]],
  ];

  const DRIFT_COLUMNS = [
    { key: "name", title: "Feature" },
    { key: "psi", title: "PSI", fmt: "f3", sort: -1 },
    { key: "js_distance", title: "JS", fmt: "f3", sort: -1 },
    { key: "ks_statistic", title: "KS", fmt: "f3", sort: -1 },
    { key: "ks_pvalue", title: "p-value", fmt: "p", sort: 1 },
    { key: "drifted", title: "Drifted", fmt: "bool" },
  ];

  function modelPage() {
    const st = { models: null, mon: null, points: new Map(), lastT: null, range: 3600, sort: null, dir: -1, feature: null, picked: false, scores: null, featureDoc: null };
    const kpis = byId("kpis");
    fill(
      kpis,
      KPIS.map(([title, path, fmt, sub]) =>
        h("div", { class: "kpi" }, h("div", { class: "kpi-title" }, title), h("div", { class: "kpi-value" }, fig(null, path, fmt)), h("div", { class: "kpi-sub" }, sub.map(([text, p, f]) => (p ? [text, fig(null, p, f)] : text))))
      )
    );

    function renderHead() {
      const { models, mon } = st;
      const ready = models.serving !== null;
      const c = models.candidate;
      fill(
        byId("head"),
        h("span", { class: `badge ${ready ? "ok" : "bad"}`, "data-health": ready ? "ready" : "not-ready" }, ready ? "ready" : "not ready"),
        h("span", null, "live ", h("code", { "data-live-version": "" }, models.live || "—")),
        c ? h("span", null, `${c.role} `, h("code", { "data-candidate-version": "" }, c.version), ` on ${Number((c.share * 100).toFixed(2))}%`) : null,
        mon ? h("span", { class: "muted" }, `window figures of ${short(mon.version)} at ${clock(mon.generated_at)}`) : null
      );
      const select = byId("activate-version");
      const wanted = models.versions.map((v) => v.version).reverse();
      const have = [...select.options].map((o) => o.value);
      if (JSON.stringify(wanted) !== JSON.stringify(have)) {
        const keep = select.value;
        fill(select, wanted.map((v) => h("option", { value: v }, v)));
        if (wanted.includes(keep)) select.value = keep;
      }
      for (const o of select.options) {
        const v = models.versions.find((x) => x.version === o.value);
        o.textContent = `${o.value}${v && v.live ? " (live)" : ""}`;
      }
    }

    function liveEvents() {
      return st.models.history.filter((ev) => ev.reason !== "default");
    }
    /** The version live at ``t``, from the switch history. */
    function liveAt(t) {
      const hist = st.models.history;
      let live = null;
      for (const ev of hist) {
        if (ev.t <= t) live = ev.version;
        else if (live === null) return ev.previous || ev.version;
      }
      return live === null ? st.models.live : live;
    }

    function renderCharts() {
      if (!st.models) return;
      const pts = [...st.points.values()].filter((p) => p.version === liveAt(p.t)).sort((a, b) => a.t - b.t);
      const now = st.mon ? st.mon.generated_at : Date.now() / 1000;
      // from the first point kept (or the range's start, if earlier) to now
      const first = pts.length ? pts[0].t : now - 60;
      const x0 = st.range ? Math.max(now - st.range, Math.min(first, now - 60)) : first;
      const series = (name, key, cls) => ({ name, cls, points: pts.map((p) => [p.t, p[key]]) });
      const events = liveEvents();
      lineChart(byId("chart-accuracy"), {
        series: [series("accuracy (labelled)", "accuracy", "acc"), series("estimate (label-free)", "estimated_accuracy", "est")],
        events,
        x0,
        x1: now,
        ratio: true,
        label: "accuracy and estimate over time",
      });
      lineChart(byId("chart-drift"), {
        series: [series("drift share", "drift_share", "drift"), series("anomaly share", "anomaly_ratio", "anom")],
        events,
        x0,
        x1: now,
        ratio: true,
        label: "drift share and anomaly share over time",
      });
    }

    function sortedFeatures(features) {
      const rows = features.map((f, j) => ({ f, j }));
      if (st.sort === null) {
        return rows.sort((a, b) => b.f.drifted - a.f.drifted || b.f.psi - a.f.psi || a.f.index - b.f.index);
      }
      const key = st.sort;
      return rows.sort((a, b) => {
        const x = a.f[key];
        const y = b.f[key];
        const c = typeof x === "string" ? x.localeCompare(y) : x - y;
        return st.dir * c || a.f.index - b.f.index;
      });
    }

    function renderDrift() {
      const d = st.mon && st.mon.drift;
      if (!d) {
        fill(byId("drift-summary"), note("No inputs in the window yet."));
        byId("drift-table").replaceChildren();
        return;
      }
      const mon = st.mon;
      fill(
        byId("drift-summary"),
        h("p", null, fig(mon, "drift.n_drifted", "int"), ` of ${d.features.length} features drifted (share `, fig(mon, "drift.drift_share", "pct1"), "), dataset drift: ", fig(mon, "drift.drift_detected", "bool"), " · on ", fig(mon, "drift.n_rows", "int"), " rows; KS α ", fig(mon, "drift.alpha", "f3"), " (Benjamini–Hochberg) and PSI ≥ ", fig(mon, "drift.min_psi", "f3"))
      );
      const head = h(
        "tr",
        null,
        DRIFT_COLUMNS.map((col) => {
          const active = st.sort === col.key;
          const arrow = active ? (st.dir < 0 ? " ▼" : " ▲") : "";
          const th = h("th", { scope: "col", class: col.fmt && col.fmt !== "bool" ? "num" : null, "aria-sort": active ? (st.dir < 0 ? "descending" : "ascending") : null });
          if (!col.sort) return put(th, null, [col.title]);
          const button = h("button", { type: "button", class: "sort", "data-sort": col.key }, col.title + arrow);
          button.addEventListener("click", () => {
            if (st.sort === col.key) st.dir = -st.dir;
            else [st.sort, st.dir] = [col.key, col.sort];
            renderDrift();
          });
          return put(th, null, [button]);
        })
      );
      const rows = sortedFeatures(d.features).map(({ f, j }) => {
        const name = h("button", { type: "button", class: "link feature", "data-feature": f.index, title: `feature ${f.index}` }, f.name);
        name.addEventListener("click", () => pickFeature(f.index));
        return h(
          "tr",
          { "data-feature": f.index, "data-drifted": String(f.drifted), class: [f.drifted ? "drifted" : "", st.feature === f.index ? "selected" : ""].join(" ").trim() || null },
          h("td", null, name),
          DRIFT_COLUMNS.slice(1).map((col) => h("td", { class: col.fmt === "bool" ? "flag" : "num" }, fig(mon, `drift.features.${j}.${col.key}`, col.fmt)))
        );
      });
      fill(byId("drift-table"), h("table", { class: "drift" }, h("thead", null, head), h("tbody", null, rows)));
    }

    async function loadFeature() {
      if (st.feature === null || !st.mon) return;
      const doc = await api("/monitoring/feature", { model: MODEL, version: st.mon.version, feature: st.feature });
      st.featureDoc = doc;
      byId("feature-title").textContent = `Feature: ${doc.name}`;
      featureChart(byId("feature-hist"), doc);
    }
    function pickFeature(index) {
      st.feature = index;
      for (const tr of document.querySelectorAll("#drift-table tr[data-feature]")) {
        tr.classList.toggle("selected", Number(tr.dataset.feature) === index);
      }
      loadFeature().catch((err) => status(`feature histogram: ${err.message}`, true));
    }

    function renderCandidate(cmp) {
      const card = byId("candidate-card");
      if (!cmp || !cmp.candidate) {
        card.classList.add("hidden");
        return;
      }
      card.classList.remove("hidden");
      const c = cmp.candidate;
      const v = cmp.comparison && cmp.comparison.verdict;
      const f = (x, fmt) => show(h("span", { class: "fig" }), x, fmt);
      const row = (label, a, b, fmt) => h("tr", null, h("th", { scope: "row" }, label), h("td", { class: "num" }, f(a, fmt)), h("td", { class: "num" }, f(b, fmt)));
      fill(
        byId("candidate"),
        h("p", null, `${c.role} `, h("code", null, c.version), ` on ${Number((c.share * 100).toFixed(2))}% since ${clock(c.since)}`),
        h(
          "div",
          { class: "scroll" },
          h(
            "table",
            { class: "compact" },
            h("thead", null, h("tr", null, h("th", null, ""), h("th", { class: "num" }, "live"), h("th", { class: "num" }, c.role))),
            h(
              "tbody",
              null,
              row("accuracy", cmp.live.accuracy, c.accuracy, "pct2"),
              row("estimate", cmp.live.estimated_accuracy, c.estimated_accuracy, "pct2"),
              row("drift share", cmp.live.drift_share, c.drift_share, "pct1"),
              row("anomalies", cmp.live.anomaly_ratio, c.anomaly_ratio, "pct2"),
              row("input rows", cmp.live.input_rows, c.input_rows, "int"),
              row("labelled rows", cmp.live.labelled_rows, c.labelled_rows, "int")
            )
          )
        ),
        cmp.comparison
          ? h("p", null, "agreement ", f(cmp.comparison.agreement, "pct2"), " · ", v ? [`${v.test}: p `, f(v.p_value, "p"), ", worse: ", f(v.worse, "bool")] : "")
          : null
      );
    }

    async function load() {
      const [models, mon] = await Promise.all([api("/models", { model: MODEL }), api("/monitoring", { model: MODEL }).catch((err) => (err.status === 503 ? null : Promise.reject(err)))]);
      st.models = models;
      st.mon = mon;
      renderHead();
      if (!mon) {
        renderCharts();
        return;
      }
      document.body.dataset.generated = String(mon.generated_at);
      const since = st.lastT !== null ? st.lastT : st.range ? mon.generated_at - st.range : 0;
      const [hist, scores, cmp] = await Promise.all([
        api("/monitoring/history", { model: MODEL, since }),
        api("/monitoring/scores", { model: MODEL, version: mon.version }),
        models.candidate ? api("/monitoring/compare", { model: MODEL }) : null,
      ]);
      for (const p of hist.points) st.points.set(`${p.t}|${p.version}`, p);
      if (hist.points.length) st.lastT = hist.points[hist.points.length - 1].t;
      if (st.range) {
        for (const [key, p] of st.points) if (p.t < mon.generated_at - st.range) st.points.delete(key);
      }
      refresh(kpis, mon);
      renderCharts();
      renderDrift();
      if (!st.picked && mon.drift && mon.drift.features.length) {
        st.picked = true;
        pickFeature(sortedFeatures(mon.drift.features)[0].f.index);
      } else if (st.feature !== null) {
        await loadFeature();
      }
      st.scores = scores;
      scoresChart(byId("scores"), scores, mon);
      delayChart(byId("delay"), mon);
      confusionChart(byId("confusion"), mon);
      f1Chart(byId("f1"), mon);
      renderCandidate(cmp);
    }
    const now = every(REFRESH_MS, load);

    byId("range").addEventListener("change", (ev) => {
      st.range = Number(ev.target.value);
      st.points.clear();
      st.lastT = null;
      now();
    });
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        if (!st.mon) return;
        renderCharts();
        if (st.featureDoc) featureChart(byId("feature-hist"), st.featureDoc);
        scoresChart(byId("scores"), st.scores, st.mon);
        delayChart(byId("delay"), st.mon);
        confusionChart(byId("confusion"), st.mon);
        f1Chart(byId("f1"), st.mon);
      }, 150);
    });

    // activate and rollback: the token goes in the Authorization header, once
    const message = byId("admin-message");
    async function switchLive(path, payload) {
      const token = byId("token");
      const headers = { "content-type": "application/json", accept: "application/json" };
      if (token.value) headers.authorization = `Bearer ${token.value}`;
      message.className = "message";
      message.textContent = "…";
      let r;
      let doc = null;
      try {
        r = await fetch(path, { method: "POST", headers, body: JSON.stringify(payload), cache: "no-store" });
        doc = await r.json().catch(() => null);
      } catch (err) {
        message.className = "message bad";
        message.textContent = `request failed: ${err.message}`;
        return;
      }
      if (!r.ok) {
        message.className = "message bad";
        message.textContent = `${r.status}: ${(doc && doc.error) || r.statusText}`;
        return;
      }
      token.value = "";
      message.className = "message ok";
      message.textContent = `${doc.reason}: ${doc.live} is live (was ${doc.previous || "none"}).`;
      if (st.models) {
        st.models.live = doc.live;
        renderHead();
      }
      now();
    }
    byId("admin").addEventListener("submit", (ev) => ev.preventDefault());
    byId("activate").addEventListener("click", () => switchLive("/models/activate", { version: byId("activate-version").value, model: MODEL }));
    byId("rollback").addEventListener("click", () => switchLive("/models/rollback", { model: MODEL }));
  }

  // -- a model's versions --------------------------------------------------------------

  function display(v, fmt) {
    if (v === null || v === undefined) return "—";
    if (fmt && typeof v === "number") return FORMATS[fmt](v);
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : Math.abs(v) >= 0.001 ? v.toFixed(4) : v.toExponential(2);
    if (typeof v === "string") return v;
    if (typeof v === "object" && !Array.isArray(v) && Object.values(v).every((x) => typeof x !== "object")) {
      return Object.entries(v).map(([k, x]) => `${k} ${display(x)}`).join(", ");
    }
    return JSON.stringify(v);
  }
  const dl = (pairs) => h("dl", { class: "facts" }, pairs.filter((p) => p[1] !== undefined).map(([k, v]) => [h("dt", null, k), h("dd", null, display(v))]));

  function lossCurve(training) {
    const hist = training.history || {};
    const tl = hist.train_loss || [];
    const vl = hist.val_loss || [];
    if (!tl.length && !vl.length) return null;
    const W = 320;
    const H = 120;
    const m = { l: 40, r: 8, t: 8, b: 20 };
    const all = [...tl, ...vl].filter(Number.isFinite);
    const { lo, hi, ticks } = domain(Math.min(0, minOf(all)), maxOf(all), false);
    const n = Math.max(tl.length, vl.length);
    const X = (i) => m.l + (i / Math.max(1, n - 1)) * (W - m.l - m.r);
    const Y = (v) => H - m.b - ((v - lo) / (hi - lo)) * (H - m.t - m.b);
    const g = svgRoot(W, H, "training and validation loss by epoch");
    g.setAttribute("class", "plot small");
    for (const v of ticks) {
      g.append(s("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: "grid" }), s("text", { x: m.l - 4, y: Y(v) + 4, class: "tick", "text-anchor": "end" }, compact(v)));
    }
    const line = (xs, cls) => s("path", { d: xs.map((v, i) => `${i ? "L" : "M"}${X(i).toFixed(1)} ${Y(v).toFixed(1)}`).join(""), class: `line ${cls}` });
    g.append(line(tl, "train"), line(vl, "val"));
    const best = training.best_epoch;
    if (Number.isInteger(best) && best >= 1 && best <= n) {
      const x = X(best - 1);
      g.append(s("line", { x1: x, x2: x, y1: m.t, y2: H - m.b, class: "event" }, s("title", null, `best epoch ${best}`)));
    }
    g.append(s("text", { x: W - m.r, y: H - 4, class: "tick", "text-anchor": "end" }, `epoch ${n}`), s("text", { x: m.l, y: H - 4, class: "tick" }, "1"));
    return h("figure", { class: "loss" }, g, legend([{ name: "training loss", cls: "train" }, { name: "validation loss", cls: "val" }]));
  }

  function reportTable(card) {
    const mt = card.metrics || {};
    if (!mt.labels) return note("No evaluation report.");
    const names = card.class_names || [];
    return h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "report" },
        h("thead", null, h("tr", null, ["class", "precision", "recall", "F1", "support"].map((t, i) => h("th", { class: i ? "num" : null }, t)))),
        h(
          "tbody",
          null,
          mt.labels.map((label, i) =>
            h("tr", null, h("td", null, names[i] !== undefined ? names[i] : String(label)), [mt.precision[i], mt.recall[i], mt.f1[i]].map((v) => h("td", { class: "num" }, FORMATS.f4(v))), h("td", { class: "num" }, String(mt.support[i])))
          )
        ),
        h("tfoot", null, h("tr", null, h("th", null, "macro"), [mt.macro_precision, mt.macro_recall, mt.macro_f1].map((v) => h("td", { class: "num" }, FORMATS.f4(v))), h("td", { class: "num" }, String(mt.n))))
      )
    );
  }

  function renderCard(card) {
    const tr = card.training || {};
    const verdict = tr.verdict;
    const cal = card.calibration || {};
    const mt = card.metrics || {};
    const data = card.data || {};
    const cfg = card.config || {};
    const hist = tr.history || {};
    const kind = verdict ? verdict.kind : null;
    return h(
      "div",
      { class: "card-grid" },
      h(
        "section",
        null,
        h("h3", null, "Evaluation"),
        h("p", null, `${data.evaluated_on || "evaluation"}: accuracy `, h("strong", null, FORMATS.f4(mt.accuracy)), ` on ${mt.n} rows`),
        reportTable(card)
      ),
      h(
        "section",
        null,
        h("h3", null, "Training"),
        verdict
          ? [
              h("p", null, h("span", { class: `badge ${kind === "fitting well" ? "ok" : "warn"}` }, kind), " ", verdict.reason),
              dl([["best epoch", tr.best_epoch], ["epochs run", hist.epochs_run], ["stopped by", hist.stop_reason], ["training time (s)", tr.training_time_s]]),
              lossCurve(tr),
            ]
          : note(`No training history: a ${card.kind} version.`),
        h("h3", null, "Calibration"),
        cal.temperature !== undefined
          ? dl([["temperature", cal.temperature], ["ECE before", cal.ece_before], ["ECE after", cal.ece_after], ["NLL before", cal.nll_before], ["NLL after", cal.nll_after], ["bins", cal.n_bins]])
          : note("Not calibrated.")
      ),
      h(
        "section",
        null,
        h("h3", null, "Config"),
        Object.keys(cfg).length ? dl(Object.keys(cfg).sort().map((k) => [k, cfg[k]])) : note("No training config."),
        h("h3", null, "Data and provenance"),
        dl([
          ["source", data.source],
          ["rows", data.rows],
          ["splits", data.split_sizes],
          ["fingerprint", data.fingerprint ? String(data.fingerprint).slice(0, 16) + "…" : undefined],
          ["features", card.n_features],
          ["classes", card.n_classes],
          ["parent", card.parent],
          ["code version", card.code_version],
          ["created", card.created_at],
          ["anomaly threshold", (card.profile || {}).anomaly_threshold],
          ["ONNX opset", (card.export || {}).opset],
        ])
      )
    );
  }

  function facts(card) {
    const out = [
      ["kind", card.kind],
      ["parent", card.parent],
      ["created", card.created_at],
      ["code version", card.code_version],
      ["features", card.n_features],
      ["classes", card.n_classes],
    ];
    const add = (prefix, obj, keys, fmt) => {
      for (const k of keys || Object.keys(obj || {}).sort()) {
        const v = (obj || {})[k];
        out.push([`${prefix}.${k}`, v, fmt && k !== "n" && k !== "n_bins" ? fmt : null]);
      }
    };
    add("config", card.config);
    add("data", card.data);
    const mt = card.metrics || {};
    add("metrics", mt, ["accuracy", "macro_precision", "macro_recall", "macro_f1", "n"], "f4");
    (mt.labels || []).forEach((label, i) => out.push([`metrics.f1[${label}]`, mt.f1[i], "f4"]));
    add("calibration", card.calibration, null, "f4");
    const tr = card.training || {};
    out.push(["training.verdict", tr.verdict ? tr.verdict.kind : null], ["training.best_epoch", tr.best_epoch], ["training.epochs_run", (tr.history || {}).epochs_run]);
    out.push(["profile.anomaly_threshold", (card.profile || {}).anomaly_threshold, "f4"]);
    return out;
  }

  function diffTable(a, b, onlyChanged) {
    const fa = new Map(facts(a).map(([k, v, f]) => [k, [v, f]]));
    const fb = new Map(facts(b).map(([k, v, f]) => [k, [v, f]]));
    const keys = [...new Set([...fa.keys(), ...fb.keys()])];
    let changes = 0;
    const rows = keys.map((k) => {
      const [x, fx] = fa.get(k) || [null, null];
      const [y, fy] = fb.get(k) || [null, null];
      const changed = JSON.stringify(x ?? null) !== JSON.stringify(y ?? null);
      changes += changed;
      if (onlyChanged && !changed) return null;
      const delta = changed && typeof x === "number" && typeof y === "number" ? `${y - x >= 0 ? "+" : ""}${display(y - x, fx || fy)}` : "";
      return h(
        "tr",
        { class: changed ? "changed" : null, "data-changed": String(changed) },
        h("th", { scope: "row" }, changed ? h("span", { class: "mark", title: "differs" }, "≠ ") : null, k),
        h("td", null, display(x, fx)),
        h("td", null, display(y, fy)),
        h("td", { class: "num" }, delta)
      );
    });
    return [
      h("p", { class: "note" }, `${changes} of ${keys.length} fields differ (marked ≠).`),
      h("table", { class: "diff" }, h("thead", null, h("tr", null, h("th", null, "field"), h("th", null, h("code", null, a.version)), h("th", null, h("code", null, b.version)), h("th", { class: "num" }, "B − A"))), h("tbody", null, rows)),
    ];
  }

  function versionsPage() {
    const cards = new Map();
    const card = (version) => {
      if (!cards.has(version)) {
        const p = api("/models/card", { model: MODEL, version }).then((d) => d.card);
        p.catch(() => cards.delete(version));
        cards.set(version, p);
      }
      return cards.get(version);
    };
    let listed = "";
    let models = null;

    function renderList() {
      const open = new Set([...document.querySelectorAll("#versions details[open]")].map((d) => d.dataset.version));
      const first = listed === "";
      fill(
        byId("versions"),
        models.versions.map((v) => {
          const cand = models.candidate && models.candidate.version === v.version;
          const details = h(
            "details",
            { "data-version": v.version, open: (first ? v.live : open.has(v.version)) ? "" : null },
            h(
              "summary",
              null,
              h("code", null, v.version),
              v.live ? h("span", { class: "badge ok", "data-live": "" }, "live") : null,
              cand ? h("span", { class: "badge warn" }, models.candidate.role) : null,
              h("span", { class: "muted" }, ` ${v.created.replace("T", " ").slice(0, 19)} · ${v.kind} · accuracy ${v.accuracy === null ? "—" : FORMATS.f4(v.accuracy)}${v.parent ? ` · parent ${v.parent}` : ""}`)
            ),
            h("div", { class: "card-body" }, note("Loading the card…"))
          );
          const load = () =>
            card(v.version).then(
              (c) => fill(details.querySelector(".card-body"), renderCard(c)),
              (err) => fill(details.querySelector(".card-body"), h("p", { class: "error" }, err.message))
            );
          details.addEventListener("toggle", () => details.open && load());
          if (details.open) load();
          return details;
        })
      );
    }

    function renderHistory() {
      const rows = [...models.history].reverse().map((ev) => h("tr", null, h("td", null, when(ev.t)), h("td", null, ev.reason), h("td", null, h("code", null, ev.version)), h("td", null, ev.previous ? h("code", null, ev.previous) : "—")));
      fill(
        byId("history"),
        rows.length
          ? h("table", { class: "history" }, h("thead", null, h("tr", null, ["when", "reason", "live", "previous"].map((t) => h("th", null, t)))), h("tbody", null, rows))
          : note("No switch yet: the newest version serves.")
      );
    }

    async function renderDiff() {
      const a = byId("diff-a").value;
      const b = byId("diff-b").value;
      if (!a || !b) return;
      const [ca, cb] = await Promise.all([card(a), card(b)]);
      fill(byId("diff"), diffTable(ca, cb, byId("diff-only").checked));
    }

    function renderSelects() {
      const names = models.versions.map((v) => v.version);
      for (const [id, fallback] of [["diff-a", names[Math.max(0, names.length - 2)]], ["diff-b", names[names.length - 1]]]) {
        const sel = byId(id);
        const keep = sel.value || fallback;
        fill(sel, names.map((v) => h("option", { value: v }, v)));
        if (names.includes(keep)) sel.value = keep;
      }
    }

    for (const id of ["diff-a", "diff-b", "diff-only"]) {
      byId(id).addEventListener("change", () => renderDiff().catch((err) => fill(byId("diff"), h("p", { class: "error" }, err.message))));
    }
    every(5000, async () => {
      models = await api("/models", { model: MODEL });
      const key = JSON.stringify([models.versions, models.candidate]);
      if (key !== listed) {
        const fresh = listed === "";
        renderList();
        listed = key;
        renderSelects();
        if (fresh) await renderDiff();
      }
      renderHistory();
    });
  }

  const page = document.body.dataset.page;
  if (page === "overview") overviewPage();
  else if (page === "model") modelPage();
  else if (page === "versions") versionsPage();
})();
