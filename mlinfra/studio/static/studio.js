// mlinfra studio: draws the charts (uPlot) and the graphs (dagre layout, SVG) of a
// page from the data the server put in it or serves as JSON. No inline script: the
// page's Content-Security-Policy allows only the studio's own files.
"use strict";

(function () {
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
                "#be185d", "#4d7c0f", "#7c2d12", "#475569"];
  var SVG = "http://www.w3.org/2000/svg";
  // Steps and points are whole numbers: the x axis never ticks between two.
  var STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5,
               2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8, 2e8, 5e8, 1e9];

  function fetchJSON(url) {
    return fetch(url, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) { throw new Error(url + ": HTTP " + r.status); }
      return r.json();
    });
  }

  function note(el, text, cls) {
    var p = document.createElement("p");
    p.className = cls || "muted";
    p.textContent = text;
    el.appendChild(p);
  }

  // One metric of one or more runs; with several runs the curves are overlaid on
  // steps joined by uPlot.join (a run without a step leaves a gap).
  function drawChart(fig) {
    if (fig.dataset.drawn) { return; }
    fig.dataset.drawn = "1";
    var runs = fig.dataset.runs.split(",").filter(Boolean);
    var key = fig.dataset.key;
    var width = Math.max(fig.clientWidth - 8, 240);
    var points = Math.min(Math.max(Math.round(width), 50), 2000);
    Promise.all(runs.map(function (run) {
      return fetchJSON("/api/runs/" + encodeURIComponent(run) + "/metrics/" +
                       encodeURIComponent(key) + "?points=" + points);
    })).then(function (all) {
      var present = all.filter(function (d) { return d.x.length > 0; });
      if (present.length === 0) { note(fig, "no points"); return; }
      var data = present.length === 1 ? [present[0].x, present[0].y]
        : uPlot.join(present.map(function (d) { return [d.x, d.y]; }));
      var series = [{label: present[0].x_label}];
      present.forEach(function (d, i) {
        series.push({label: d.run, stroke: COLORS[i % COLORS.length], width: 1.5,
                     spanGaps: true, points: {show: d.x.length < 60}});
      });
      var chart = new uPlot({width: width, height: 220, series: series,
                             scales: {x: {time: false}},
                             axes: [{label: present[0].x_label, incrs: STEPS}, {}],
                             legend: {live: true}}, data, fig);
      fig.dataset.series = String(present.length);
      fig.dataset.total = present.map(function (d) { return d.total; }).join(",");
      fig.chart = chart;
    }).catch(function (err) { note(fig, String(err), "error"); });
  }

  // A chart whose data the page holds: {x, series: [{label, values, dash?}], time?}
  // (a monitor's value per window against its threshold).
  function drawSeries(fig) {
    if (fig.dataset.drawn) { return; }
    fig.dataset.drawn = "1";
    var source = document.getElementById(fig.dataset.source);
    if (!source) { return; }
    var data = JSON.parse(source.textContent);
    if (!data.x.length) { note(fig, "no windows"); return; }
    var width = Math.max(fig.clientWidth - 8, 240);
    var series = [{label: data.time ? "window" : "x"}];
    data.series.forEach(function (s, i) {
      series.push({label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5,
                   dash: s.dash ? [6, 4] : undefined, spanGaps: false,
                   points: {show: !s.dash && data.x.length < 60}});
    });
    var chart = new uPlot({width: width, height: 200, series: series,
                           scales: {x: {time: !!data.time}}, legend: {live: true}},
                          [data.x].concat(data.series.map(function (s) { return s.values; })),
                          fig);
    fig.dataset.series = String(data.series.length);
    fig.chart = chart;
  }

  function svg(tag, attrs, parent) {
    var el = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(el); }
    return el;
  }

  // A graph of nodes {id, label | kind+name, href?, action?, symbol?} and edges
  // {from, to}, laid out left to right by dagre.
  function drawGraph(box) {
    if (box.dataset.drawn) { return; }
    box.dataset.drawn = "1";
    var source = document.getElementById(box.dataset.graph);
    if (!source) { return; }
    var data = JSON.parse(source.textContent);
    if (!data.nodes.length) { note(box, "Nothing to draw."); return; }
    var g = new dagre.graphlib.Graph();
    g.setGraph({rankdir: "LR", nodesep: 14, ranksep: 48, marginx: 8, marginy: 8});
    g.setDefaultEdgeLabel(function () { return {}; });
    data.nodes.forEach(function (n) {
      var text = n.label || ((n.symbol ? n.symbol + " " : "") + n.id);
      n.text = text;
      g.setNode(n.id, {width: Math.max(80, text.length * 7.2 + 20), height: 30, data: n});
    });
    data.edges.forEach(function (e) {
      if (g.hasNode(e.from) && g.hasNode(e.to)) { g.setEdge(e.from, e.to); }
    });
    dagre.layout(g);
    // The drawing's bounds: every node and every point of every edge.
    var x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    function grow(x, y) { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y); }
    g.nodes().forEach(function (id) {
      var nd = g.node(id);
      grow(nd.x - nd.width / 2, nd.y - nd.height / 2); grow(nd.x + nd.width / 2, nd.y + nd.height / 2);
    });
    g.edges().forEach(function (e) { g.edge(e).points.forEach(function (p) { grow(p.x, p.y); }); });
    var w = Math.ceil(x1 - x0 + 16), h = Math.ceil(y1 - y0 + 16);
    var root = svg("svg", {viewBox: (x0 - 8) + " " + (y0 - 8) + " " + w + " " + h,
                           width: w, height: h, role: "img", "class": "graph-svg"}, box);
    var defs = svg("defs", {}, root);
    var marker = svg("marker", {id: box.id + "-arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
                                markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse"}, defs);
    svg("path", {d: "M 0 0 L 10 5 L 0 10 z", "class": "arrow"}, marker);
    g.edges().forEach(function (e) {
      var pts = g.edge(e).points;
      var d = "M " + pts.map(function (p) { return p.x + " " + p.y; }).join(" L ");
      svg("path", {d: d, "class": "edge", "marker-end": "url(#" + box.id + "-arrow)"}, root);
    });
    g.nodes().forEach(function (id) {
      var node = g.node(id);
      var n = node.data;
      var parent = root;
      if (n.href) {
        parent = svg("a", {href: n.href, "class": "node-link", "data-node": n.id}, root);
      }
      // A plan's nodes are coloured by their action, a lineage's by what they are.
      var cls = box.dataset.kind === "plan" ? "action-" + n.action
        : "kind-" + String(n.kind || "").toLowerCase();
      var group = svg("g", {"class": "node " + cls,
                            "data-node": n.id,
                            transform: "translate(" + (node.x - node.width / 2) + "," +
                                       (node.y - node.height / 2) + ")"}, parent);
      svg("rect", {width: node.width, height: node.height, rx: 5, ry: 5}, group);
      var label = svg("text", {x: 10, y: 19}, group);
      label.textContent = n.text;
      if (n.reason) {
        var title = svg("title", {}, group);
        title.textContent = n.id + ": " + n.reason;
      }
    });
  }

  function init(root) {
    (root || document).querySelectorAll("figure.chart:not(.series)").forEach(drawChart);
    (root || document).querySelectorAll("figure.chart.series").forEach(drawSeries);
    (root || document).querySelectorAll("div.graph").forEach(drawGraph);
  }

  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:afterSettle", function (evt) { init(evt.target); });
})();
