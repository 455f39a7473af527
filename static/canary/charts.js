// Draws every Plotly figure embedded as JSON in a page, on load and after each htmx swap.
// Figures come from the server as <script type="application/json" data-plot-for="ID">.
(function () {
  "use strict";
  var plotlyLoading = null;

  function loadPlotly() {
    if (window.Plotly) return Promise.resolve(window.Plotly);
    if (!plotlyLoading) {
      plotlyLoading = new Promise(function (resolve, reject) {
        var script = document.createElement("script");
        script.src = document.body.dataset.plotlySrc || "/static/vendor/plotly.min.js";
        script.onload = function () { resolve(window.Plotly); };
        script.onerror = reject;
        document.head.appendChild(script);
      });
    }
    return plotlyLoading;
  }

  function drawAll(root) {
    var specs = (root || document).querySelectorAll("script[data-plot-for]");
    if (!specs.length) return;
    loadPlotly().then(function (Plotly) {
      specs.forEach(function (spec) {
        var target = document.getElementById(spec.dataset.plotFor);
        if (!target) return;
        var figure = JSON.parse(spec.textContent);
        var config = Object.assign({ responsive: true, displaylogo: false }, figure.config || {});
        Plotly.react(target, figure.data || [], figure.layout || {}, config);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSettle", function (event) { drawAll(event.target); });
})();
