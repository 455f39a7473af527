// Draws every Plotly figure embedded as JSON in a page, on load and after each htmx swap.
// Figures come from the server as <script type="application/json" data-plot-for="ID">.
(function () {
  "use strict";
  var plotlyLoading = null;

  // The Content-Security-Policy refuses a <style> without the page's nonce. plotly.js writes its
  // global rules into the nonce-carrying #plotly.js-style-global of base.html, but also adds a
  // <style> of its own to <head> as it loads (its map CSS), and may add one per plot (the mode bar's
  // colours); those get the nonce as they are added. This lends nothing to an attacker: only our
  // own script files run (script-src 'self'), and any of them could read the nonce anyway; what
  // the nonce keeps out is style markup injected into a page, which never passes through here.
  function lendNonceToAddedStyles() {
    var head = document.head;
    var nonce = (document.getElementById("plotly.js-style-global") || {}).nonce;
    if (!nonce || head.appendChild !== Node.prototype.appendChild) return;
    head.appendChild = function (child) {
      if (child instanceof HTMLStyleElement) child.nonce = nonce;
      return Node.prototype.appendChild.call(this, child);
    };
  }

  function loadPlotly() {
    if (window.Plotly) return Promise.resolve(window.Plotly);
    if (!plotlyLoading) {
      lendNonceToAddedStyles();
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
