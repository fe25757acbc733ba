// Refreshes the live part of the dashboard in place (no library, no build step).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var seconds = Math.max(1, parseFloat(live.getAttribute("data-refresh-s")) || 10);
  function refresh() {
    fetch("/dashboard/live", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location = "/dashboard/login"; return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null) { live.innerHTML = html; } })
      .catch(function () { /* keep the last view; try again next tick */ });
  }
  window.setInterval(refresh, seconds * 1000);
})();
