// faasbox dashboard: draws the charts of a page from its JSON data block (uPlot).
(function () {
  "use strict";
  var COLORS = ["#2563eb", "#dc2626", "#d97706", "#7c3aed", "#059669"];

  function draw() {
    var block = document.getElementById("chart-data");
    if (!block || typeof uPlot === "undefined") return;
    var data = JSON.parse(block.textContent);
    document.querySelectorAll("figure.chart").forEach(function (fig) {
      var names = fig.dataset.series.split(",");
      var series = [{}];
      var columns = [data.t];
      names.forEach(function (name, i) {
        series.push({label: name, stroke: COLORS[i % COLORS.length], width: 2,
                     points: {show: true, size: 5}});
        columns.push(data[name].map(function (v) { return v === null ? null : v; }));
      });
      var width = Math.max(280, fig.clientWidth || 480);
      var plot = new uPlot({title: fig.dataset.title, width: width, height: 220,
                            series: series,
                            scales: {x: {time: true, range: [data.from, data.to]}}},
                           columns, fig);
      fig.dataset.points = String(data.t.length);
      fig.classList.add("drawn");
      fig.plot = plot;
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
