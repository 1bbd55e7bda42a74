// p2pmarket dashboard: follow the node live. Every data-refresh milliseconds, fetch this
// page's <main> again (?part=main, same origin, the session cookie) and put it in place.
// A 401 (the session ended) reloads the page, which then shows the sign-in form.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main) { return; }
  var every = parseInt(main.getAttribute("data-refresh") || "0", 10);
  if (!every) { return; }
  var count = 0;
  function refresh() {
    var url = new URL(window.location.href);
    url.searchParams.set("part", "main");
    fetch(url.toString(), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          main.innerHTML = html;
          count += 1;
          document.body.setAttribute("data-refreshed", String(count));
        }
      })
      .catch(function () { /* the node is restarting: try again later */ })
      .then(function () { window.setTimeout(refresh, every); });
  }
  window.setTimeout(refresh, every);
}());
