// The coar explorer's views. Data: the JSON in #coar-data (coar/explorer.py page_data), typed
// arrays as base64. Views are routed by the location hash so that links and Back work:
// #examples, #example/<id>, #component/<module>:<unit>, #methods, #edits.
"use strict";

const D = JSON.parse(document.getElementById("coar-data").textContent);
const PAGE_ROWS = 100;
const PLOT_CONFIG = {displaylogo: false, responsive: true};

function decode(text, Type) {
  const bytes = atob(text);
  const buffer = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) buffer[i] = bytes.charCodeAt(i);
  return new Type(buffer.buffer);
}

const N = D.n_components, n = D.n_examples;
const intercept = decode(D.intercept, Float32Array);
const strongest = {k: D.top.k, index: decode(D.top.index, Int32Array), value: decode(D.top.value, Float32Array)};
const heat = {bins: D.heatmap.bins, cells: decode(D.heatmap.cells, Int8Array), scale: decode(D.heatmap.scale, Float32Array),
              width: D.heatmap.bins.reduce((a, b) => a + b, 0)};
const C = D.components;
const comp = {k: C.k, up: decode(C.up, Int32Array), upValue: decode(C.up_value, Float32Array),
              down: decode(C.down, Int32Array), downValue: decode(C.down_value, Float32Array),
              mean: decode(C.mean, Float32Array), low: decode(C.low, Float32Array), high: decode(C.high, Float32Array),
              bins: C.bins, counts: decode(C.counts, Int32Array)};
const corr = D.correlations;
const perExample = {};
for (const m of corr.methods) {
  perExample[m] = {};
  for (const a of Object.keys(corr.per_example[m])) perExample[m][a] = decode(corr.per_example[m][a], Float32Array);
}
const heldout = D.heldout && {points: D.heldout.points, alpha: D.heldout.alpha,
  truth: decode(D.heldout.true, Float32Array), predicted: decode(D.heldout.predicted, Float32Array)};
const indexOfId = new Map(D.ids.map((id, i) => [id, i]));
const trainAlpha = corr.alphas.includes(D.alpha) ? D.alpha : corr.alphas[0];

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function fmt(value, digits = 3) {
  return value == null || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
}

function signed(value) {
  return el("span", {class: value < 0 ? "neg" : "pos", text: (value > 0 ? "+" : "") + Number(value).toPrecision(3)});
}

function group(index) {
  let lo = 0, hi = D.groups.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (D.groups[mid].start <= index) lo = mid; else hi = mid - 1;
  }
  return lo;
}

function componentName(index) {
  const g = D.groups[group(index)];
  return `${g.module}:${index - g.start}`;
}

function componentIndex(name) {
  const cut = name.lastIndexOf(":");
  const module = name.slice(0, cut), unit = Number(name.slice(cut + 1));
  const g = D.groups.find(x => x.module === module);
  return g && Number.isInteger(unit) && unit >= 0 && unit < g.size ? g.start + unit : null;
}

function exampleLink(i) {
  return el("a", {href: "#example/" + encodeURIComponent(D.ids[i]), class: "example-link", text: D.ids[i]});
}

function componentLink(c) {
  return el("a", {href: "#component/" + encodeURIComponent(componentName(c)), class: "component-link", text: componentName(c)});
}

function thumb(i, cls = "thumb") {
  if (!D.thumbs) return null;
  const src = D.thumbs.inline ? D.thumbs.inline[i] : `${D.thumbs.folder}/${i}.png`;
  return el("img", {class: cls, src, alt: D.ids[i], loading: "lazy"});
}

function tokens(i) {
  if (!D.tokens) return null;
  return el("div", {class: "tokens", title: "token ids"}, ...D.tokens[i].map(t => el("span", {text: String(t)})));
}

function plot(cls = "plot") {
  return el("div", {class: cls});
}

function draw(node, traces, layout) {
  Plotly.newPlot(node, traces, Object.assign({margin: {l: 55, r: 20, t: 60, b: 45}}, layout), PLOT_CONFIG);
}

function finite(values) {
  return Array.from(values).filter(v => !Number.isNaN(v));
}

function label(i) {
  return D.labels ? String(D.labels[i]) : "";
}

// ------------------------------------------------------------------ views

const examplesState = {query: "", sort: "index", descending: false, page: 0};

function viewExamples(root) {
  root.append(el("h2", {text: `Examples (${n})`}));
  root.append(el("p", {class: "note", text: `Per-example held-out correlation between predicted and true outputs at alpha ${trainAlpha || "–"} (the training alpha), for every method; "intercept" is COAR's predicted output with nothing ablated.`}));
  const dist = plot("plot wide");
  root.append(dist);
  const search = el("input", {type: "search", id: "example-search", placeholder: "search id or label", value: examplesState.query});
  const pager = el("span", {class: "pager"});
  root.append(el("div", {class: "controls"}, search, pager));
  const table = el("table", {id: "examples-table"});
  root.append(table);
  const columns = [["index", "#"], ["id", "id"], ["label", "label"], ["intercept", "intercept"],
                   ...corr.methods.map(m => ["corr:" + m, m])];

  function key(column) {
    if (column === "index") return i => i;
    if (column === "id") return i => D.ids[i];
    if (column === "label") return i => (D.labels ? D.labels[i] : 0);
    if (column === "intercept") return i => intercept[i];
    const values = perExample[column.slice(5)][trainAlpha];
    return i => (Number.isNaN(values[i]) ? -Infinity : values[i]);
  }

  function rows() {
    const query = examplesState.query.trim().toLowerCase();
    let chosen = [];
    for (let i = 0; i < n; i++) {
      if (!query || D.ids[i].toLowerCase().includes(query) || label(i).toLowerCase() === query) chosen.push(i);
    }
    const f = key(examplesState.sort), sign = examplesState.descending ? -1 : 1;
    chosen.sort((a, b) => { const x = f(a), y = f(b); return x < y ? -sign : x > y ? sign : a - b; });
    return chosen;
  }

  function fill() {
    const chosen = rows();
    const pages = Math.max(1, Math.ceil(chosen.length / PAGE_ROWS));
    examplesState.page = Math.min(examplesState.page, pages - 1);
    table.replaceChildren();
    table.append(el("tr", {}, ...columns.map(([column, title]) => el("th", {
      class: "sortable", text: title + (examplesState.sort === column ? (examplesState.descending ? " ▼" : " ▲") : ""),
      onclick: () => {
        examplesState.descending = examplesState.sort === column ? !examplesState.descending : column.startsWith("corr:");
        examplesState.sort = column; fill();
      }}))));
    for (const i of chosen.slice(examplesState.page * PAGE_ROWS, (examplesState.page + 1) * PAGE_ROWS)) {
      table.append(el("tr", {},
        el("td", {class: "num", text: String(i)}), el("td", {}, exampleLink(i)), el("td", {text: label(i)}),
        el("td", {class: "num", text: fmt(intercept[i])}),
        ...corr.methods.map(m => el("td", {class: "num", text: fmt(perExample[m][trainAlpha][i])}))));
    }
    pager.replaceChildren(
      el("button", {text: "‹", onclick: () => { examplesState.page = Math.max(0, examplesState.page - 1); fill(); }}),
      ` page ${examplesState.page + 1} of ${pages} (${chosen.length} examples) `,
      el("button", {text: "›", onclick: () => { examplesState.page = Math.min(pages - 1, examplesState.page + 1); fill(); }}));
  }

  search.addEventListener("input", () => { examplesState.query = search.value; examplesState.page = 0; fill(); });
  fill();
  if (corr.methods.length) {
    draw(dist, corr.methods.map(m => ({type: "histogram", name: m, x: finite(perExample[m][trainAlpha]),
                                       opacity: 0.55, xbins: {size: 0.02}})),
         {barmode: "overlay", title: {text: `per-example held-out correlation, alpha ${trainAlpha}`},
          xaxis: {title: {text: "correlation"}}, yaxis: {title: {text: "examples"}}});
  } else {
    dist.replaceWith(el("p", {class: "note", text: "This run has no evaluation yet: no correlations to show."}));
  }
}

function viewExample(root, id) {
  const i = indexOfId.get(id);
  if (i === undefined) return notFound(root, `no example with id ${id}`);
  root.append(el("h2", {id: "example-title", text: `Example ${id}`}));
  const facts = el("dl", {class: "facts"},
    el("dt", {text: "index"}), el("dd", {text: String(i)}),
    D.labels ? el("dt", {text: "label"}) : null, D.labels ? el("dd", {text: label(i)}) : null,
    el("dt", {text: "intercept"}), el("dd", {text: fmt(intercept[i])}),
    ...corr.methods.flatMap(m => [el("dt", {text: `correlation, ${m}`}),
                                  el("dd", {text: corr.alphas.map(a => `${fmt(perExample[m][a][i])} (α ${a})`).join(", ")})]));
  root.append(el("div", {class: "row"}, thumb(i, "large"), facts));
  if (D.tokens) root.append(tokens(i));

  const plots = el("div", {class: "row"});
  root.append(plots);
  const ranked = el("div", {}, el("h3", {text: `Top ${strongest.k} components by |effect|`}),
    el("p", {class: "note", text: "effect = predicted change of the output when the component alone is ablated"}));
  plots.append(ranked);
  const table = el("table", {id: "top-components"}, el("tr", {}, ...["rank", "component", "kind", "effect", ""].map(t => el("th", {text: t}))));
  const largest = Math.abs(strongest.value[i * strongest.k]) || 1;
  for (let r = 0; r < strongest.k; r++) {
    const c = strongest.index[i * strongest.k + r], v = strongest.value[i * strongest.k + r];
    table.append(el("tr", {}, el("td", {class: "num", text: String(r + 1)}), el("td", {}, componentLink(c)),
      el("td", {text: D.groups[group(c)].kind}), el("td", {class: "num"}, signed(v)),
      el("td", {}, el("span", {class: "bar " + (v < 0 ? "neg" : "pos"), style: `width:${Math.round(120 * Math.abs(v) / largest)}px`}))));
  }
  ranked.append(table);
  const heatmap = plot("plot");
  plots.append(heatmap);
  const width = Math.max(...heat.bins);
  const z = [], text = [];
  let column = i * heat.width;
  for (let g = 0; g < D.groups.length; g++) {
    const row = new Array(width).fill(null), labels = new Array(width).fill("");
    const size = D.groups[g].size, count = heat.bins[g];
    for (let b = 0; b < count; b++) {
      row[b] = heat.cells[column + b] / 127 * heat.scale[i];
      const first = Math.floor(b * size / count), last = Math.floor((b + 1) * size / count) - 1;
      labels[b] = first === last ? `unit ${first}` : `units ${first}-${last}`;
    }
    column += count;
    z.push(row); text.push(labels);
  }
  draw(heatmap, [{type: "heatmap", z, text, y: D.groups.map(g => g.module), colorscale: "RdBu", reversescale: true, zmid: 0,
                  hovertemplate: "%{y} %{text}<br>effect %{z:.3g}<extra></extra>"}],
       {title: {text: "attributions by layer and unit"}, yaxis: {autorange: "reversed", automargin: true},
        xaxis: {title: {text: heat.width < N ? "unit (binned: strongest effect per bin)" : "unit"}}});
  heatmap.on("plotly_click", event => {
    const point = event.points[0], g = D.groups.findIndex(x => x.module === point.y);
    if (g >= 0 && heat.bins[g] === D.groups[g].size && point.x < D.groups[g].size) {
      location.hash = "#component/" + encodeURIComponent(`${D.groups[g].module}:${point.x}`);
    }
  });

  if (heldout) {
    const scatter = plot("plot");
    plots.append(scatter);
    const truth = Array.from(heldout.truth.subarray(i * heldout.points, (i + 1) * heldout.points));
    const predicted = Array.from(heldout.predicted.subarray(i * heldout.points, (i + 1) * heldout.points));
    const lo = Math.min(...truth, ...predicted), hi = Math.max(...truth, ...predicted);
    draw(scatter, [{type: "scatter", mode: "markers", x: truth, y: predicted, name: "held-out mask"},
                   {type: "scatter", mode: "lines", x: [lo, hi], y: [lo, hi], name: "y = x", line: {dash: "dot", color: "#888"}}],
         {title: {text: `COAR predicted vs true, ${heldout.points} held-out masks, alpha ${heldout.alpha}`}, showlegend: false,
          xaxis: {title: {text: "true output"}}, yaxis: {title: {text: "predicted output"}}});
  }
}

function viewComponent(root, name) {
  const c = componentIndex(name);
  if (c === null) return notFound(root, `no component ${name}`);
  const g = D.groups[group(c)];
  root.append(el("h2", {id: "component-title", text: `Component ${name}`}));
  root.append(el("dl", {class: "facts"},
    el("dt", {text: "module"}), el("dd", {text: g.module}),
    el("dt", {text: "layer"}), el("dd", {text: `${group(c) + 1} of ${D.groups.length}`}),
    el("dt", {text: "unit"}), el("dd", {text: `${c - g.start} of ${g.size}`}),
    el("dt", {text: "kind"}), el("dd", {text: g.kind}),
    el("dt", {text: "index"}), el("dd", {text: String(c)}),
    el("dt", {text: "mean effect"}), el("dd", {}, signed(comp.mean[c]))));
  const row = el("div", {class: "row"});
  root.append(row);
  for (const [title, indices, values, id] of [["Ablating it raises the output most", comp.up, comp.upValue, "moves-up"],
                                              ["Ablating it lowers the output most", comp.down, comp.downValue, "moves-down"]]) {
    const table = el("table", {id}, el("tr", {}, ...["", "example", "label", "effect"].map(t => el("th", {text: t}))));
    for (let r = 0; r < comp.k; r++) {
      const i = indices[c * comp.k + r];
      table.append(el("tr", {}, el("td", {}, thumb(i)), el("td", {}, exampleLink(i)), el("td", {text: label(i)}),
                      el("td", {class: "num"}, signed(values[c * comp.k + r]))));
    }
    row.append(el("div", {}, el("h3", {text: title}), table));
  }
  const histogram = plot("plot");
  row.append(histogram);
  const width = (comp.high[c] - comp.low[c]) / comp.bins || 1;
  draw(histogram, [{type: "bar", x: Array.from({length: comp.bins}, (_, b) => comp.low[c] + (b + 0.5) * width),
                    y: Array.from(comp.counts.subarray(c * comp.bins, (c + 1) * comp.bins)), width, marker: {color: "#546e7a"}}],
       {title: {text: `its effect on each of the ${n} examples`}, xaxis: {title: {text: "effect"}}, yaxis: {title: {text: "examples"}}});
}

function viewMethods(root) {
  root.append(el("h2", {text: "Methods"}));
  if (!corr.methods.length) return root.append(el("p", {class: "note", text: "This run has no evaluation yet."}));
  root.append(el("p", {class: "note", text: "Mean over examples of the per-example held-out correlation; every method scored on the same held-out masks."}));
  const table = el("table", {id: "methods-table"}, el("tr", {}, el("th", {text: "method"}),
    ...corr.alphas.map(a => el("th", {text: `alpha ${a}${a === D.alpha ? " (training)" : ""}`}))));
  for (const m of corr.methods) {
    table.append(el("tr", {}, el("td", {text: m}), ...corr.alphas.map(a => el("td", {class: "num", text: fmt(corr.mean[m][a])}))));
  }
  root.append(table);
  const row = el("div", {class: "row"});
  root.append(row);
  for (const a of corr.alphas) {
    const box = plot("plot");
    row.append(box);
    draw(box, corr.methods.map(m => ({type: "box", name: m, y: finite(perExample[m][a]), boxpoints: false})),
         {title: {text: `per-example correlation, alpha ${a}`}, showlegend: false, yaxis: {title: {text: "correlation"}}});
  }
  if (corr.methods.length > 1) {
    const scatter = plot("plot");
    row.append(scatter);
    const first = corr.methods[0];
    draw(scatter, corr.methods.slice(1).map(m => ({type: "scatter", mode: "markers", name: m, marker: {size: 4},
      x: Array.from(perExample[m][trainAlpha]), y: Array.from(perExample[first][trainAlpha])})),
         {title: {text: `${first} vs each other method, per example, alpha ${trainAlpha}`},
          xaxis: {title: {text: "other method's correlation"}}, yaxis: {title: {text: `${first}'s correlation`}}});
  }
}

function isScalar(v) {
  return v === null || ["string", "number", "boolean"].includes(typeof v);
}

function valueTable(value, depth = 0) {
  if (isScalar(value)) return document.createTextNode(typeof value === "number" ? String(+value.toPrecision(6)) : String(value));
  if (depth > 3) return document.createTextNode(JSON.stringify(value).slice(0, 200));
  if (Array.isArray(value)) {
    if (value.every(isScalar)) return document.createTextNode(value.slice(0, 50).map(v => String(v)).join(", ") + (value.length > 50 ? ", …" : ""));
    if (value.every(v => v && typeof v === "object" && !Array.isArray(v))) {
      const keys = [...new Set(value.flatMap(Object.keys))];
      return el("table", {}, el("tr", {}, ...keys.map(k => el("th", {text: k}))),
        ...value.slice(0, 200).map(v => el("tr", {}, ...keys.map(k => el("td", {}, valueTable(v[k], depth + 1))))));
    }
  }
  return el("table", {}, ...Object.entries(value).map(([k, v]) => el("tr", {}, el("th", {text: k}), el("td", {}, valueTable(v, depth + 1)))));
}

function curves(value, path = "") {
  // Every list of objects with a numeric "k": its other numeric fields plotted against k.
  if (!value || typeof value !== "object") return [];
  if (Array.isArray(value) && value.length > 1 && value.every(v => v && typeof v.k === "number")) {
    const fields = Object.keys(value[0]).filter(f => f !== "k" && value.every(v => typeof v[f] === "number"));
    return fields.length ? [{path, fields, rows: value}] : [];
  }
  return Object.entries(value).flatMap(([k, v]) => curves(v, path ? `${path}.${k}` : k));
}

function viewEdits(root) {
  root.append(el("h2", {text: "Edits"}));
  const names = Object.keys(D.edits || {});
  if (!names.length) return root.append(el("p", {class: "note", text: "This run has no edits (edits/<name>/plan.json or report.json)."}));
  for (const name of names) {
    root.append(el("h3", {text: name}));
    for (const [file, value] of Object.entries(D.edits[name])) {
      root.append(el("h4", {text: `${file}.json`}));
      for (const curve of curves(value)) {
        const node = plot("plot");
        root.append(node);
        draw(node, curve.fields.map(f => ({type: "scatter", mode: "lines+markers", name: f, x: curve.rows.map(r => r.k), y: curve.rows.map(r => r[f])})),
             {title: {text: `${curve.path || file} vs k`}, xaxis: {title: {text: "k"}}});
      }
      root.append(valueTable(value));
    }
  }
}

function notFound(root, message) {
  root.append(el("h2", {text: "Not found"}), el("p", {text: message}), el("a", {href: "#examples", text: "back to the examples"}));
}

// ------------------------------------------------------------------ routing

function route() {
  const root = document.getElementById("view");
  for (const node of root.querySelectorAll(".js-plotly-plot")) Plotly.purge(node);
  root.replaceChildren();
  const hash = decodeURIComponent(location.hash.slice(1));
  const cut = hash.indexOf("/");
  const [view, arg] = cut < 0 ? [hash, ""] : [hash.slice(0, cut), hash.slice(cut + 1)];
  const active = {example: "examples", component: "examples"}[view] || view || "examples";
  for (const link of document.querySelectorAll("header nav a")) link.classList.toggle("active", link.id === "nav-" + active);
  if (view === "example") viewExample(root, arg);
  else if (view === "component") viewComponent(root, arg);
  else if (view === "methods") viewMethods(root);
  else if (view === "edits") viewEdits(root);
  else viewExamples(root);
  document.body.dataset.view = view || "examples";
  window.scrollTo(0, 0);
}

document.getElementById("title").textContent = `coar explorer: ${D.run}`;
document.getElementById("subtitle").textContent =
  `${D.task || ""} · ${n} examples × ${N} components · trained at alpha ${D.alpha} · output ${D.output_fn || ""}`;
if (!Object.keys(D.edits || {}).length) document.getElementById("nav-edits").title = "this run has no edits";
window.addEventListener("hashchange", route);
route();
document.body.dataset.ready = "1";
window.coarReadyAt = performance.now();
