// Refreshes the parts of a page marked data-live every few seconds, in place, by fetching
// the same page again. Pages are complete without this script; it only keeps numbers fresh.
(function () {
  "use strict";
  var PERIOD_MS = 5000;
  function refresh() {
    if (document.hidden) { return; }
    var live = document.querySelectorAll("[data-live][id]");
    if (!live.length) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Live": "1" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        live.forEach(function (node) {
          var replacement = fresh.getElementById(node.id);
          var active = document.activeElement;
          if (replacement && !(active && node.contains(active))) {
            node.replaceWith(document.importNode(replacement, true));
          }
        });
      })
      .catch(function () { /* offline for a moment: try again at the next tick */ });
  }
  window.setInterval(refresh, PERIOD_MS);
})();
