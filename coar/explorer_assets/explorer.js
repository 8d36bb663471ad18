// The coar explorer's views. Data: the JSON in #coar-data (coar/explorer.py page_data), typed
// arrays as base64. Views are routed by the location hash so that links and Back work:
// #examples, #example/<id>, #component/<name>, #methods, #edits, with <name> a component's one
// name on every surface ("module[unit]", or "module:kind[unit]"; ComponentSet.names()).
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

// One colour per method in every plot and legend (coar's methods fixed, any other in turn from the spares).
const METHOD_COLORS = {coar: "#1f77b4", loo: "#ff7f0e", grad_x_param: "#2ca02c", conductance: "#9467bd", internal_influence: "#8c564b"};
const SPARE_COLORS = ["#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#6a3d9a", "#b15928"];
corr.methods.filter(m => !(m in METHOD_COLORS))
  .forEach((m, j) => { METHOD_COLORS[m] = SPARE_COLORS[j % SPARE_COLORS.length]; });

function methodColor(method) {
  return METHOD_COLORS[method] || SPARE_COLORS[0];
}

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

// One name and one layer per component, as the command line, the Python API and exports give them
// (ComponentSet.names() and .layers(); coar/explorer.py component_labels): per group the name
// before "[unit]" and the layer, or, should a name not have that form, the whole lists.
// A layer is the module's position among the modules that hold components, 0 nearest the input.
const groupOfName = new Map(D.groups.map((g, i) => [g.name, i]));
let indexOfName = null;

function componentName(index) {
  if (D.component_names) return D.component_names[index];
  const g = D.groups[group(index)];
  return `${g.name}[${index - g.start}]`;
}

function componentLayer(index) {
  return D.component_layers ? D.component_layers[index] : D.groups[group(index)].layer;
}

function layerText(index) {
  return `${componentLayer(index)} (0 nearest the input) of ${D.n_layers} modules`;
}

function componentIndex(text) {
  // The component a name denotes (surrounding spaces ignored), or null.
  const name = String(text).trim();
  if (D.component_names) {
    indexOfName = indexOfName || new Map(D.component_names.map((x, i) => [x, i]));
    return indexOfName.has(name) ? indexOfName.get(name) : null;
  }
  const found = /^(.*)\[(0|[1-9][0-9]*)\]$/s.exec(name);
  if (!found || !groupOfName.has(found[1])) return null;
  const g = D.groups[groupOfName.get(found[1])], unit = Number(found[2]);
  return unit < g.size ? g.start + unit : null;
}

function similarComponents(text, limit = 5) {
  // Components whose name contains `text` (case ignored), for a name not found; an explorer link of
  // older coar ("module:unit") gives that component first.
  const query = String(text).trim(), found = [];
  const old = /^(.*):(0|[1-9][0-9]*)$/.exec(query);
  if (old) {
    const g = D.groups.find(x => x.module === old[1]);
    if (g && Number(old[2]) < g.size) found.push(g.start + Number(old[2]));
  }
  const lower = query.toLowerCase(), stem = lower.replace(/(\[[0-9]*\]?|:[0-9]*)$/, "");
  for (const part of [lower, stem]) {
    for (let c = 0; c < N && found.length < limit && part; c++) {
      if (!found.includes(c) && componentName(c).toLowerCase().includes(part)) found.push(c);
    }
  }
  return found.slice(0, limit);
}

function exampleLink(i) {
  return el("a", {href: "#example/" + encodeURIComponent(D.ids[i]), class: "example-link", text: D.ids[i]});
}

function componentLink(c) {
  return el("a", {href: "#component/" + encodeURIComponent(componentName(c)), class: "component-link", text: componentName(c),
                  title: `layer ${layerText(c)}`});
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

function extent(arrays) {
  // [smallest, largest] finite value of some arrays (no spread: a call takes only so many arguments).
  let lo = Infinity, hi = -Infinity;
  for (const values of arrays) for (const v of values) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return [lo, hi];
}

function methodLabel(method, text = method) {
  // A method's name after a swatch of its colour (the colour of its traces in every plot).
  return el("span", {class: "method", "data-method": method},
            el("span", {class: "swatch", style: `background:${methodColor(method)}`}), text);
}

function label(i) {
  return D.labels ? String(D.labels[i]) : "";
}

// ------------------------------------------------------------------ views

const examplesState = {query: "", sort: "index", descending: false, page: 0};

function viewExamples(root) {
  root.append(el("h2", {text: `Examples (${n})`}));
  root.append(el("p", {class: "note", text: `Per-example held-out correlation between predicted and true outputs at alpha ${trainAlpha || "–"} (the training alpha), for every method; "intercept" is COAR's predicted output with nothing ablated.`}));
  const dist = plot("plot wide correlation-histogram");
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
    const arrow = column => (examplesState.sort === column ? (examplesState.descending ? " ▼" : " ▲") : "");
    table.append(el("tr", {}, ...columns.map(([column, title]) => el("th", {
      class: "sortable", onclick: () => {
        examplesState.descending = examplesState.sort === column ? !examplesState.descending : column.startsWith("corr:");
        examplesState.sort = column; fill();
      }}, column.startsWith("corr:") ? methodLabel(title, title + arrow(column)) : title + arrow(column)))));
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
                                       opacity: 0.55, xbins: {size: 0.02}, marker: {color: methodColor(m)}})),
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
    el("p", {class: "note", text: "effect = predicted change of the output when the component alone is ablated"}),
    el("p", {class: "note", text: "layer = its module's position among the modules with components, 0 nearest the input"}));
  plots.append(ranked);
  const table = el("table", {id: "top-components"}, el("tr", {}, ...["rank", "component", "layer", "kind", "effect", ""].map(t => el("th", {text: t}))));
  const largest = Math.abs(strongest.value[i * strongest.k]) || 1;
  for (let r = 0; r < strongest.k; r++) {
    const c = strongest.index[i * strongest.k + r], v = strongest.value[i * strongest.k + r];
    table.append(el("tr", {}, el("td", {class: "num", text: String(r + 1)}), el("td", {}, componentLink(c)),
      el("td", {class: "num", text: String(componentLayer(c))}), el("td", {text: D.groups[group(c)].kind}), el("td", {class: "num"}, signed(v)),
      el("td", {}, el("span", {class: "bar " + (v < 0 ? "neg" : "pos"), style: `width:${Math.round(120 * Math.abs(v) / largest)}px`}))));
  }
  ranked.append(table);
  const heatmap = plot("plot heatmap-plot");
  plots.append(heatmap);
  const width = Math.max(...heat.bins);
  const z = [], text = [];
  let column = i * heat.width;
  for (let g = 0; g < D.groups.length; g++) {
    const row = new Array(width).fill(null), labels = new Array(width).fill("");
    const {size, start, name} = D.groups[g], count = heat.bins[g];
    for (let b = 0; b < count; b++) {
      row[b] = heat.cells[column + b] / 127 * heat.scale[i];
      const first = Math.floor(b * size / count), last = Math.floor((b + 1) * size / count) - 1;
      labels[b] = (first === last ? componentName(start + first) : `${name}, units ${first}-${last}`) + `<br>layer ${componentLayer(start + first)}`;
    }
    column += count;
    z.push(row); text.push(labels);
  }
  // Rows are categories named as the components' names begin (module, or module:kind), whatever
  // they look like: an nn.Sequential's modules "0", "2", "4" would otherwise make a numeric axis.
  draw(heatmap, [{type: "heatmap", z, text, y: D.groups.map(g => g.name), colorscale: "RdBu", reversescale: true, zmid: 0,
                  hovertemplate: "%{text}<br>effect %{z:.3g}<extra></extra>"}],
       {title: {text: "attributions by layer and unit<br><sub>a row per module, layer 0 (nearest the input) at the top</sub>"},
        yaxis: {type: "category", autorange: "reversed", automargin: true},
        xaxis: {title: {text: heat.width < N ? "unit (binned: strongest effect per bin)" : "unit"}}});
  heatmap.on("plotly_click", event => {
    const point = event.points[0], g = groupOfName.get(String(point.y));
    if (g !== undefined && heat.bins[g] === D.groups[g].size && point.x < D.groups[g].size) {
      location.hash = "#component/" + encodeURIComponent(componentName(D.groups[g].start + point.x));
    }
  });

  if (heldout) {
    const scatter = plot("plot heldout-plot");
    plots.append(scatter);
    const truth = Array.from(heldout.truth.subarray(i * heldout.points, (i + 1) * heldout.points));
    const predicted = Array.from(heldout.predicted.subarray(i * heldout.points, (i + 1) * heldout.points));
    const lo = Math.min(...truth, ...predicted), hi = Math.max(...truth, ...predicted);
    draw(scatter, [{type: "scatter", mode: "markers", x: truth, y: predicted, name: "held-out mask", marker: {color: methodColor("coar")}},
                   {type: "scatter", mode: "lines", x: [lo, hi], y: [lo, hi], name: "y = x", line: {dash: "dot", color: "#888"}}],
         {title: {text: `COAR predicted vs true, ${heldout.points} held-out masks, alpha ${heldout.alpha}`}, showlegend: false,
          xaxis: {title: {text: "true output"}}, yaxis: {title: {text: "predicted output"}}});
  }
}

function viewComponent(root, name) {
  const c = componentIndex(name);
  if (c === null) {
    const similar = similarComponents(name);
    return notFound(root, `no component named ${name} among the ${N} of this run (a name is written module[unit], ` +
                          "or module:kind[unit] where a module holds units of two kinds)",
                    similar.length ? el("p", {id: "similar-components"}, "closest: ",
                                        ...similar.flatMap((s, j) => [j ? ", " : null, componentLink(s)])) : null);
  }
  const g = D.groups[group(c)];
  root.append(el("h2", {id: "component-title", text: `Component ${componentName(c)}`}));
  root.append(el("dl", {class: "facts"},
    el("dt", {text: "module"}), el("dd", {text: g.module}),
    el("dt", {text: "layer"}), el("dd", {id: "component-layer", text: layerText(c)}),
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
    table.append(el("tr", {}, el("td", {}, methodLabel(m)), ...corr.alphas.map(a => el("td", {class: "num", text: fmt(corr.mean[m][a])}))));
  }
  root.append(table);
  const row = el("div", {class: "row"});
  root.append(row);
  for (const a of corr.alphas) {
    const box = plot("plot box-plot");
    row.append(box);
    draw(box, corr.methods.map(m => ({type: "box", name: m, y: finite(perExample[m][a]), boxpoints: false,
                                      line: {color: methodColor(m)}, marker: {color: methodColor(m)}})),
         {title: {text: `per-example correlation, alpha ${a}`}, showlegend: false, xaxis: {type: "category"},
          yaxis: {title: {text: "correlation"}}});
  }
  if (corr.methods.length > 1) {
    const scatter = plot("plot methods-scatter");
    row.append(scatter);
    const first = corr.methods[0], y = Array.from(perExample[first][trainAlpha]);
    const traces = corr.methods.slice(1).map(m => ({type: "scatter", mode: "markers", name: m, marker: {size: 4, color: methodColor(m)},
      x: Array.from(perExample[m][trainAlpha]), y}));
    // y = x: above it, the first method predicts that example's held-out outputs better than the other.
    const [lo, hi] = extent([y, ...traces.map(t => t.x)]);
    if (lo <= hi) {
      traces.push({type: "scatter", mode: "lines", name: "y = x", x: [lo, hi], y: [lo, hi], line: {dash: "dot", color: "#888"},
                   hoverinfo: "skip", showlegend: false});
    }
    draw(scatter, traces,
         {title: {text: `${first} vs each other method, per example, alpha ${trainAlpha}`},
          xaxis: {title: {text: "other method's correlation"}}, yaxis: {title: {text: `${first}'s correlation`}}});
  }
}

// ------------------------------------------------------------------ edits
// One section per applied edit (D.edits[name] = {report, ablated, plan}, coar/explorer.py _edits):
// what was chosen and whether it held, then the plots that show why, then the raw files, folded.
// Every report field is optional here: a per-example edit has no sweep or weights, a prefix selection tries no candidates.

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

const ROLE_COLORS = {target: "#c62828", reference: "#1565c0", other: "#b0bec5"};
const ACCURACIES = [["target", "target, test"], ["reference", "reference, test"],
                    ["validation_target", "target, validation"], ["validation_reference", "reference, validation"]];

function viewEdits(root) {
  root.append(el("h2", {text: "Edits"}));
  const names = Object.keys(D.edits || {});
  if (!names.length) return root.append(el("p", {class: "note", text: "This run has no applied edits (edits/<name>/report.json)."}));
  for (const name of names) editSection(root, name, D.edits[name]);
}

function editSection(root, name, edit) {
  // One edit: headline, plots, per-example results, chosen components, folds.
  const report = edit.report, spec = report.edit || {};
  const section = el("section", {class: "edit", id: "edit-" + name}, el("h3", {text: name}), editHeadline(report));
  if (report.problems && report.problems.length) {
    section.append(el("ul", {class: "problems"}, ...report.problems.map(p => el("li", {text: p}))));
  }
  section.append(el("p", {class: "note", text: `target: ${selector(spec.target)} · reference: ${selector(spec.reference)}` +
    ` · components: ${(spec.components || ["–"]).join(", ")} · tolerance ${spec.tolerance ?? "–"}` +
    " · test = the run's attributed examples; validation = the examples k was chosen on"}));
  root.append(section);
  if (report.per_example) section.append(perExampleSummary(report.per_example));
  const plots = el("div", {class: "row"});
  section.append(plots);
  const k = typeof report.k === "number" ? report.k : null;
  if (report.metrics) accuracyBars(plots, report.metrics, (report.predicted_vs_realised || {}).accuracy);
  if (report.sweep && Array.isArray(report.sweep.ks)) sweepPlots(plots, report.sweep, k, report.checks);
  if (report.predicted_vs_realised && Array.isArray(report.predicted_vs_realised.examples)) {
    predictedVsRealised(plots, report.predicted_vs_realised, k);
  }
  if (report.per_example) perExampleEdit(section, plots, report.per_example, (edit.ablated || {}).per_example || {});
  if (edit.ablated && Array.isArray(edit.ablated.ablated)) section.append(chosenComponents(edit.ablated));
  if (Array.isArray(report.tried)) section.append(triedFold(report.tried));
  section.append(rawFold(name, edit));
}

function selector(value) {
  // A target or reference selector in words: {label: 3} -> "label 3", {rest: true} -> "rest".
  return Object.entries(value || {}).map(([key, v]) => (v === true ? key : `${key} ${v}`)).join(", ") || "–";
}

function editHeadline(report) {
  // direction · chosen k and its rule · selection · checks: the answer, before any plot.
  const spec = report.edit || {}, checks = report.checks || {}, parts = [];
  parts.push(el("span", {}, el("strong", {text: spec.direction || "–"}), " the target output"));
  if (typeof report.k === "number") {
    parts.push(el("span", {}, el("strong", {class: "chosen-k", text: `k = ${report.k}`}), report.rule ? ` (${report.rule})` : ""));
  } else if (report.per_example && Array.isArray(report.per_example.examples)) {
    const ks = report.per_example.examples.map(e => e.k).filter(Number.isFinite);
    if (ks.length) {
      parts.push(el("span", {}, el("strong", {class: "chosen-k", text: `k = ${Math.min(...ks)}–${Math.max(...ks)}`}),
                    ` (${report.rule || "one per example"})`));
    }
  }
  if (report.selection) parts.push(el("span", {text: `selection: ${report.selection}`}));
  if (typeof checks.passed === "boolean") {
    parts.push(el("span", {class: checks.passed ? "ok" : "neg", text: checks.passed ? "checks passed" : "checks failed"}));
  }
  return el("p", {class: "edit-headline"}, ...parts.flatMap((part, i) => (i ? [" · ", part] : [part])));
}

function accuracyBars(row, metrics, predicted) {
  // Before -> after accuracy (fraction of outputs > 0) of target and reference, on test and validation;
  // between them, where the report has it, the accuracy the attributions (and the surrogate) predicted (test only).
  const shown = ACCURACIES.filter(([key]) => metrics[key] && Array.isArray(metrics[key].accuracy));
  if (!shown.length) return;
  const node = plot("plot accuracy-plot");
  row.append(node);
  const x = shown.map(([key, title]) => `${title}<br>n = ${metrics[key].n ?? "–"}`);
  const bar = (when, y, color) => ({type: "bar", name: when, x, y, marker: {color}, text: y.map(v => (v === null ? "" : fmt(v, 2))),
                                    textposition: "outside", cliponaxis: false});
  const at = i => shown.map(([key]) => metrics[key].accuracy[i]);
  const bars = [bar("before", at(0), "#b0bec5")];
  const by = field => shown.map(([key]) => (predicted && predicted[key] && typeof predicted[key][field] === "number" ?
    predicted[key][field] : null));
  if (by("predicted").some(v => v !== null)) bars.push(bar("after, predicted", by("predicted"), "#90caf9"));
  if (by("surrogate_predicted").some(v => v !== null)) bars.push(bar("after, surrogate", by("surrogate_predicted"), "#ce93d8"));
  draw(node, [...bars, bar("after", at(1), "#37474f")],
       {title: {text: "accuracy before → after the edit"}, barmode: "group", legend: {orientation: "h", y: 1.08}, xaxis: {type: "category"},
        yaxis: {title: {text: "accuracy (outputs > 0)"}, range: [0, 1.12]}, margin: {l: 55, r: 20, t: 70, b: 60}});
}

function markK(k, ks) {
  // Layout parts marking the chosen k with a labelled vertical line (label inside the plot at the last k).
  if (k === null) return {};
  return {shapes: [{type: "line", x0: k, x1: k, yref: "paper", y0: 0, y1: 1, line: {dash: "dot", color: "#333"}}],
          annotations: [{x: k, yref: "paper", y: 1, text: ` k = ${k} `, showarrow: false, yanchor: "bottom",
                         xanchor: k < Math.max(...ks) ? "left" : "right"}]};
}

function sweepPlots(row, sweep, k, checks) {
  // Over k: the mean output change predicted by the attributions and realised on validation, then
  // validation target success and reference accuracy with the tolerance the rule keeps to.
  const change = [];
  for (const role of ["target", "reference"]) {
    for (const [key, what, dash] of [["predicted_mean_change", "predicted", "dash"], ["realised_mean_change", "realised", "solid"]]) {
      const y = sweep[key] && sweep[key][role];
      if (Array.isArray(y)) {
        change.push({type: "scatter", mode: "lines", name: `${role}, ${what}`, x: sweep.ks, y, line: {color: ROLE_COLORS[role], dash},
                     hovertemplate: `${role}, ${what}: %{y:.3g} at k = %{x}<extra></extra>`});
      }
    }
  }
  if (change.length) {
    const node = plot("plot change-plot");
    row.append(node);
    draw(node, change, {title: {text: "mean output change vs k<br><sub>red: target, blue: reference · dashed: predicted by " +
                                      "the attributions (test) · solid: realised on validation</sub>"},
                        showlegend: false, xaxis: {title: {text: "k (components ablated)"}},
                        yaxis: {title: {text: "mean output change"}}, margin: {l: 55, r: 20, t: 85, b: 45}, ...markK(k, sweep.ks)});
  }
  const success = sweep.validation_target_success, accuracy = sweep.validation_reference_accuracy;
  const validation = [[success, "target success", ROLE_COLORS.target], [accuracy, "reference accuracy", ROLE_COLORS.reference]]
    .filter(([y]) => Array.isArray(y))
    .map(([y, name, color]) => ({type: "scatter", mode: "lines", name, x: sweep.ks, y, line: {color},
                                 hovertemplate: `${name}: %{y:.3f} at k = %{x}<extra></extra>`}));
  if (!validation.length) return;
  const node = plot("plot validation-plot");
  row.append(node);
  const layout = markK(k, sweep.ks);
  if (Array.isArray(accuracy) && checks && typeof checks.tolerance === "number") {
    const floor = accuracy[0] - checks.tolerance;
    layout.shapes = [...(layout.shapes || []), {type: "line", xref: "paper", x0: 0, x1: 1, y0: floor, y1: floor, line: {dash: "dash", color: "#90a4ae"}}];
    layout.annotations = [...(layout.annotations || []), {xref: "paper", x: 1, y: floor, text: `reference tolerance ${checks.tolerance}`,
                                                          showarrow: false, xanchor: "right", yanchor: "top", font: {color: "#607d8b"}}];
  }
  draw(node, validation, {title: {text: "on validation, vs k<br><sub>red: target success (outputs moved past 0) · " +
                                          "blue: reference accuracy (outputs > 0)</sub>"},
                          showlegend: false, xaxis: {title: {text: "k (components ablated)"}},
                          yaxis: {title: {text: "fraction of examples"}, range: [0, 1.05]}, margin: {l: 55, r: 20, t: 85, b: 45},
                          ...layout});
}

function predictedVsRealised(row, pairs, k) {
  // Per example, the change the attributions predict against the one the edited model makes; y = x is a perfect prediction.
  const examples = pairs.examples.filter(e => Number.isFinite(e.predicted) && Number.isFinite(e.realised));
  if (!examples.length) return;
  const node = plot("plot predicted-plot");
  row.append(node);
  const traces = ["other", "reference", "target"].map(role => {
    const rows = examples.filter(e => (e.role in ROLE_COLORS ? e.role : "other") === role);
    return {type: "scatter", mode: "markers", name: `${role} (${rows.length})`, x: rows.map(e => e.predicted), y: rows.map(e => e.realised),
            text: rows.map(e => e.id), marker: {color: ROLE_COLORS[role], size: 5},
            hovertemplate: "%{text}<br>predicted %{x:.3g}<br>realised %{y:.3g}<extra></extra>"};
  }).filter(t => t.x.length);
  const values = examples.flatMap(e => [e.predicted, e.realised]), lo = Math.min(...values), hi = Math.max(...values);
  traces.push({type: "scatter", mode: "lines", name: "y = x", x: [lo, hi], y: [lo, hi], line: {dash: "dot", color: "#888"}, hoverinfo: "skip"});
  const ratio = pairs.realised_over_predicted || {};
  const shown = pairs.n_examples > examples.length ? `${examples.length} of ${pairs.n_examples} examples` : `${examples.length} examples`;
  draw(node, traces, {title: {text: `predicted vs realised output change${k === null ? "" : `, k = ${k}`}<br><sub>` +
                                    `correlation ${fmt(pairs.correlation)} · realised / predicted: target ${fmt(ratio.target, 2)}, ` +
                                    `reference ${fmt(ratio.reference, 2)} · ${shown}</sub>`},
                      xaxis: {title: {text: "predicted change (attributions)"}}, yaxis: {title: {text: "realised change (test)"}}});
  node.on("plotly_click", event => {
    const id = event.points[0].text;
    if (indexOfId.has(id)) location.hash = "#example/" + encodeURIComponent(id);
  });
}

function componentRef(row) {
  // A link to the component's page when the row's index is the same (module, unit, kind) in this run, else its module[unit].
  const i = row.index, g = Number.isInteger(i) && i >= 0 && i < N ? D.groups[group(i)] : null;
  const known = g && g.module === row.module && i - g.start === row.unit && (row.kind === undefined || g.kind === row.kind);
  return known ? componentLink(i) : document.createTextNode(`${row.module}[${row.unit}]`);
}

function chosenComponents(ablated) {
  // The components the edit ablates, in order, each linking to its page.
  const layerOf = new Map(D.groups.map(g => [g.module, g.layer]));
  const table = el("table", {class: "edit-components"}, el("tr", {}, ...["#", "component", "layer", "kind", "score"].map(t => el("th", {text: t}))));
  ablated.ablated.forEach((row, r) => table.append(el("tr", {}, el("td", {class: "num", text: String(r + 1)}), el("td", {}, componentRef(row)),
    el("td", {class: "num", text: layerOf.has(row.module) ? String(layerOf.get(row.module)) : ""}),
    el("td", {text: row.kind || ""}), el("td", {class: "num", text: fmt(row.score)}))));
  const modules = Object.entries(ablated.by_layer || {}).map(([module, count]) => `${module} ×${count}`).join(", ");
  return el("div", {}, el("h4", {text: `The ${ablated.ablated.length} components ablated`}),
            modules ? el("p", {class: "note", text: `per module: ${modules}`}) : null, el("div", {class: "scroll"}, table));
}

function triedFold(tried) {
  // The verified selection's candidates in the order tried: accepted, or skipped and why.
  const accepted = tried.filter(t => t.accepted).length;
  const table = el("table", {class: "edit-tried"}, el("tr", {}, ...["#", "component", "", "reason"].map(t => el("th", {text: t}))));
  tried.forEach((row, r) => table.append(el("tr", {}, el("td", {class: "num", text: String(r + 1)}), el("td", {}, componentRef(row)),
    el("td", {class: row.accepted ? "ok" : "neg", text: row.accepted ? "accepted" : "skipped"}), el("td", {text: row.reason || ""}))));
  return el("details", {class: "tried"}, el("summary", {text: `Candidates tried: ${tried.length} (${accepted} accepted, ${tried.length - accepted} skipped)`}),
            el("div", {class: "scroll"}, table));
}

function perExampleSummary(result) {
  // How many target examples their own edit fixed, and what it cost the reference.
  const n = result.n ?? (Array.isArray(result.examples) ? result.examples.length : "–");
  const test = result.median_test_reference_loss == null ? "" : `, test ${fmt(result.median_test_reference_loss)}`;
  return el("p", {class: "edit-summary"}, el("strong", {text: `fixed ${result.fixed ?? "–"} of ${n}`}),
    ` (${fmt(result.fraction_fixed == null ? null : 100 * result.fraction_fixed, 0)}%) · median reference accuracy loss ` +
    `${fmt(result.median_reference_loss)} (validation${test})`);
}

function perExampleEdit(section, row, result, sets) {
  // Each target example's output before and after its own edit (a plot in `row`, a table below it),
  // with the components its edit ablates (`sets`: ablated.json's per_example).
  const examples = Array.isArray(result.examples) ? result.examples : [];
  if (!examples.length) return;
  const node = plot("plot per-example-plot");
  row.append(node);
  const outputs = examples.filter(e => Array.isArray(e.output));
  const traces = [[true, "fixed", "#2e7d32"], [false, "not fixed", ROLE_COLORS.target]].map(([fixed, name, color]) => {
    const rows = outputs.filter(e => Boolean(e.fixed) === fixed);
    return {type: "scatter", mode: "markers", name: `${name} (${rows.length})`, x: rows.map(e => e.output[0]), y: rows.map(e => e.output[1]),
            text: rows.map(e => `${e.id}, k = ${e.k}`), marker: {color, size: 7}, hovertemplate: "%{text}<br>before %{x:.3g}<br>after %{y:.3g}<extra></extra>"};
  }).filter(t => t.x.length);
  draw(node, traces, {title: {text: "each example's output, before and after its own edit"},
                      xaxis: {title: {text: "output before"}, zeroline: true}, yaxis: {title: {text: "output after"}, zeroline: true}});
  const table = el("table", {class: "per-example-table"}, el("tr", {}, ...["example", "k", "", "output before → after",
    "reference accuracy (validation) before → after", "components ablated"].map(t => el("th", {text: t}))));
  const pair = v => (Array.isArray(v) ? `${fmt(v[0])} → ${fmt(v[1])}` : "–");
  for (const e of examples.slice(0, PAGE_ROWS)) {
    table.append(el("tr", {}, el("td", {}, indexOfId.has(e.id) ? exampleLink(indexOfId.get(e.id)) : document.createTextNode(String(e.id))),
      el("td", {class: "num", text: String(e.k ?? "–")}), el("td", {class: e.fixed ? "ok" : "neg", text: e.fixed ? "fixed" : "not fixed"}),
      el("td", {class: "num", text: pair(e.output)}), el("td", {class: "num", text: pair(e.reference_accuracy)}),
      el("td", {}, ...(sets[e.id] || []).flatMap((c, j) => [j ? ", " : null, componentRef(c)]))));
  }
  const more = examples.length > PAGE_ROWS ? el("p", {class: "note", text: `the first ${PAGE_ROWS} of ${examples.length} examples`}) : null;
  section.append(el("div", {}, el("div", {class: "scroll"}, table), more));
}

function rawFold(name, edit) {
  // plan.json and report.json as key/value tables, built when the fold is first opened (a report can be long).
  const fold = el("details", {class: "raw"}, el("summary", {text: `raw plan.json and report.json of ${name}`}));
  fold.addEventListener("toggle", () => {
    if (!fold.open || fold.children.length > 1) return;
    for (const [file, value] of [["plan.json", edit.plan], ["report.json", edit.report]]) {
      if (value) fold.append(el("h4", {text: file}), valueTable(value));
    }
  });
  return fold;
}

function notFound(root, message, ...more) {
  root.append(el("h2", {text: "Not found"}), el("p", {text: message}), ...more, el("a", {href: "#examples", text: "back to the examples"}));
}

// ------------------------------------------------------------------ routing

function route() {
  const root = document.getElementById("view");
  for (const node of root.querySelectorAll(".js-plotly-plot")) Plotly.purge(node);
  root.replaceChildren();
  let hash = location.hash.slice(1);
  try { hash = decodeURIComponent(hash); } catch (error) { /* a bare "%": keep the text as typed */ }
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

function lookupComponent() {
  // The header's box: a component's name (as `coar show` prints it) or "#index" opens its page;
  // typing lists up to 12 names that contain the text.
  const form = document.getElementById("component-lookup"), box = document.getElementById("component-search");
  const list = document.getElementById("component-suggestions");
  box.placeholder = `component, e.g. ${componentName(0)}`;
  const target = text => {
    const position = /^#([0-9]+)$/.exec(text.trim());
    return position && Number(position[1]) < N ? Number(position[1]) : componentIndex(text);
  };
  const open = text => {
    const c = target(text);
    location.hash = "#component/" + encodeURIComponent(c === null ? text.trim() : componentName(c));
  };
  box.addEventListener("input", event => {
    if (event.inputType === undefined || event.inputType === "insertReplacementText") {  // a suggestion picked
      if (componentIndex(box.value) !== null) return open(box.value);
    }
    const query = box.value.trim().toLowerCase(), shown = [];
    for (let c = 0; c < N && shown.length < 12 && query; c++) {
      if (componentName(c).toLowerCase().includes(query)) shown.push(el("option", {value: componentName(c)}));
    }
    list.replaceChildren(...shown);
  });
  form.addEventListener("submit", event => { event.preventDefault(); if (box.value.trim()) open(box.value); });
}

document.getElementById("title").textContent = `coar explorer: ${D.run}`;
lookupComponent();
document.getElementById("subtitle").textContent =
  `${D.task || ""} · ${n} examples × ${N} components · trained at alpha ${D.alpha} · output ${D.output_fn || ""}`;
if (!Object.keys(D.edits || {}).length) document.getElementById("nav-edits").title = "this run has no edits";
window.addEventListener("hashchange", route);
route();
document.body.dataset.ready = "1";
window.coarReadyAt = performance.now();
