// Overview page: plotly heatmaps (click a cell to open its neuron page), sortable and filterable neuron table.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("page-data").textContent);

  function pageFor(site, neuron) {
    return data.pages[site + "/" + neuron] || null;
  }

  function drawHeatmap(id, fig, lookup) {
    var el = document.getElementById(id);
    if (!el || !fig) { return; }
    if (typeof Plotly === "undefined") {
      el.textContent = "plotly.min.js did not load: keep it next to this page.";
      return;
    }
    Plotly.newPlot(el, fig.data, fig.layout, fig.config).then(function () {
      el.on("plotly_click", function (ev) {
        if (!ev || !ev.points || !ev.points.length) { return; }
        var href = lookup(ev.points[0]);
        if (href) { window.location.href = href; }
      });
    });
  }

  drawHeatmap("heatmap", data.heatmap, function (p) {
    var site = data.heatmap_sites[p.pointIndex[0]];
    return pageFor(site, p.pointIndex[1]);
  });
  if (data.token_heatmap) {
    drawHeatmap("token-heatmap", data.token_heatmap, function (p) {
      return pageFor(data.token_heatmap_site, data.token_heatmap_neurons[p.pointIndex[1]]);
    });
  }

  // ---- table: sort by clicking a header, filter with the controls ----
  var table = document.getElementById("neurons");
  var tbody = table.tBodies[0];
  var rows = Array.prototype.slice.call(tbody.rows);
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var count = document.getElementById("count");
  var filter = document.getElementById("filter");
  var minScore = document.getElementById("min-score");
  var minMax = document.getElementById("min-max");
  var onlyPages = document.getElementById("only-pages");

  function cellValue(row, key, type) {
    var raw = row.cells[key].getAttribute("data-v");
    if (type === "num") {
      var v = parseFloat(raw);
      return isNaN(v) ? null : v;
    }
    return (raw || "").toLowerCase();
  }

  function sortBy(th) {
    var key = parseInt(th.getAttribute("data-key"), 10);
    var type = th.getAttribute("data-type");
    var dir = th.getAttribute("aria-sort") === "descending" ? 1 : -1;  // first click: descending
    headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    rows.sort(function (a, b) {
      var x = cellValue(a, key, type), y = cellValue(b, key, type);
      if (x === y) { return 0; }
      if (x === null) { return 1; }   // empty cells last, whatever the direction
      if (y === null) { return -1; }
      return (x < y ? -1 : 1) * dir;
    });
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) { frag.appendChild(r); });
    tbody.appendChild(frag);
  }

  headers.forEach(function (th) {
    if (th.classList.contains("sortable")) {
      th.addEventListener("click", function () { sortBy(th); });
    }
  });

  function applyFilter() {
    var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var s = parseFloat(minScore.value), m = parseFloat(minMax.value);
    var shown = 0;
    rows.forEach(function (r) {
      var text = r.textContent.toLowerCase();
      var ok = words.every(function (w) { return text.indexOf(w) !== -1; });
      if (ok && !isNaN(s)) { var sv = cellValue(r, 2, "num"); ok = sv !== null && sv >= s; }
      if (ok && !isNaN(m)) { var mv = cellValue(r, 7, "num"); ok = mv !== null && mv >= m; }
      if (ok && onlyPages.checked) { ok = r.getAttribute("data-page") === "1"; }
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " rows";
  }

  [filter, minScore, minMax].forEach(function (el) { el.addEventListener("input", applyFilter); });
  onlyPages.addEventListener("change", applyFilter);
  applyFilter();
})();
