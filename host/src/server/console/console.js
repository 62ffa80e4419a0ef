// deploy-agent console: refreshes <main> when the page's live feed (server-sent events)
// says something changed. Ours, no build step; the pages read the same without it.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var src = main && main.getAttribute("data-live");
  if (!src || !window.EventSource || !window.fetch) return;
  // What each refresh showed, and when: the browser test reads it to measure the latency
  // from an event to the page showing it.
  var updates = (window.consoleUpdates = []);
  var progress = src.indexOf("run=") >= 0;
  var busy = false, queued = null, lastProgress = 0;

  function editing() {
    var a = document.activeElement;
    return a && main.contains(a) && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName) && a.type !== "hidden";
  }

  function refresh(ev) {
    if (busy || editing()) { queued = ev; return; }
    busy = true;
    var u = new URL(location.href);
    u.searchParams.set("fragment", "1");
    fetch(u.toString(), { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        main.innerHTML = html;
        var at = null;
        try { at = Date.parse(JSON.parse(ev.data).at); } catch (e) { at = null; }
        updates.push({ kind: ev.type, seq: Number(ev.lastEventId), at: at, shown: Date.now() });
        main.setAttribute("data-seq", ev.lastEventId);
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () {
        busy = false;
        if (queued) { var q = queued; queued = null; refresh(q); }
      });
  }

  document.addEventListener("focusout", function () {
    setTimeout(function () { if (queued && !editing()) { var q = queued; queued = null; refresh(q); } }, 0);
  });

  var es = new EventSource(src, { withCredentials: true });
  ["started", "stage-started", "stage-succeeded", "stage-failed", "approval-requested",
   "succeeded", "failed", "rolled-back"].forEach(function (kind) {
    es.addEventListener(kind, refresh);
  });
  es.addEventListener("progress", function (ev) {
    var now = Date.now();
    if (progress && now - lastProgress >= 1000) { lastProgress = now; refresh(ev); }
  });
  es.addEventListener("open", function () { main.setAttribute("data-connected", "1"); });
})();
