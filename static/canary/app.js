// The dashboard's behaviour: shows why an htmx request failed (403, 404, 429, 5xx, network)
// instead of failing silently, and keeps paired inputs and their read-outs in step. Pages carry
// no inline script or handler (the Content-Security-Policy forbids them); elements name what they
// drive in data attributes instead, and one listener on the document serves swapped-in content too.
(function () {
  "use strict";
  function show(message) {
    var box = document.getElementById("request-error");
    if (!box) return;
    box.textContent = message;
    box.hidden = false;
    clearTimeout(box._timer);
    box._timer = setTimeout(function () { box.hidden = true; }, 8000);
  }
  function messageOf(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* an HTML error page */ }
    var doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
    var alert = doc.querySelector("[role=alert]");
    return (alert && alert.textContent.trim()) || ("Request failed (" + xhr.status + ").");
  }
  document.addEventListener("htmx:responseError", function (event) { show(messageOf(event.detail.xhr)); });
  // data-mirror="ID": copy this input's value into input ID (a slider and its number box).
  // data-show-share="ID" / data-show-rest="ID": write the value, and 100 minus it, as percentages.
  function setText(id, text) {
    var target = id && document.getElementById(id);
    if (target) target.textContent = text;
  }
  document.addEventListener("input", function (event) {
    var input = event.target;
    if (!(input instanceof HTMLInputElement)) return;
    var data = input.dataset;
    if (data.mirror) {
      var twin = document.getElementById(data.mirror);
      if (twin) twin.value = input.value;
    }
    if (data.showShare || data.showRest) {
      var share = Number(input.value);
      setText(data.showShare, share.toFixed(2));
      setText(data.showRest, (100 - share).toFixed(2));
    }
  });
  document.addEventListener("htmx:sendError", function () { show("Canary could not be reached. Check your connection."); });
})();
