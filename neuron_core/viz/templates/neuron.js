// Neuron page: the activation histogram (plotly).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("page-data").textContent);
  var el = document.getElementById("histogram");
  if (!el || !data.histogram) { return; }
  if (typeof Plotly === "undefined") {
    el.textContent = "plotly.min.js did not load: keep it next to this page.";
    return;
  }
  Plotly.newPlot(el, data.histogram.data, data.histogram.layout, data.histogram.config);
})();
