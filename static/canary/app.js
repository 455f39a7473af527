// Shows why an htmx request failed (403, 404, 429, 5xx, network) instead of failing silently.
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
  document.addEventListener("htmx:sendError", function () { show("Canary could not be reached. Check your connection."); });
})();
