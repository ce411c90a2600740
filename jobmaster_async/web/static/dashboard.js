// jobmaster dashboard: live updates through server-sent events, local times, relative ages.
// No framework and no build step. Every piece of HTML it inserts was rendered (and escaped) by
// the server.
(function () {
  "use strict";

  var body = document.body;
  var clockOffset = 0; // the server's clock minus this browser's, in ms
  var lastMark = null;
  var fetching = false;
  var fetchAgain = false;

  function pad(n) { return n < 10 ? "0" + n : String(n); }

  function hm(d) { return pad(d.getHours()) + ":" + pad(d.getMinutes()); }

  function dateTime(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      hm(d) + ":" + pad(d.getSeconds());
  }

  function duration(seconds) {
    seconds = Math.max(0, seconds);
    if (seconds < 10) return Math.floor(seconds) + "s";
    var whole = Math.floor(seconds);
    var units = [[86400, "d", 3600, "h"], [3600, "h", 60, "m"], [60, "m", 1, "s"]];
    for (var i = 0; i < units.length; i++) {
      var u = units[i];
      if (whole >= u[0]) {
        var rest = Math.floor((whole % u[0]) / u[2]);
        return Math.floor(whole / u[0]) + u[1] + (rest ? " " + rest + u[3] : "");
      }
    }
    return whole + "s";
  }

  function ago(date) {
    var seconds = (Date.now() + clockOffset - date.getTime()) / 1000;
    if (Math.abs(seconds) < 1) return "now";
    var text = duration(Math.abs(seconds));
    return seconds > 0 ? text + " ago" : "in " + text;
  }

  // UTC times written by the server, shown in this browser's time zone
  function localize(root) {
    var nodes = root.querySelectorAll("[data-ts]");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var d = new Date(el.getAttribute("data-ts"));
      if (isNaN(d.getTime())) continue;
      var fmt = el.getAttribute("data-fmt");
      if (fmt === "hm") el.textContent = hm(d);
      else if (fmt === "tip") el.textContent = hm(d) + ": " + (el.getAttribute("data-text") || "");
      else el.textContent = dateTime(d);
    }
  }

  function tick() {
    var nodes = document.querySelectorAll("[data-since]");
    for (var i = 0; i < nodes.length; i++) {
      var d = new Date(nodes[i].getAttribute("data-since"));
      if (!isNaN(d.getTime())) nodes[i].textContent = ago(d);
    }
  }

  function setLive(state, text) {
    var el = document.getElementById("live");
    if (!el) return;
    el.setAttribute("data-state", state);
    var label = el.querySelector(".live-text");
    if (label) label.textContent = text;
  }

  // the overview: parts rendered by the server for each snapshot
  function swapRegions(regions) {
    Object.keys(regions).forEach(function (name) {
      var el = document.querySelector('[data-region="' + name + '"]');
      if (el && el.innerHTML !== regions[name]) {
        el.innerHTML = regions[name];
        localize(el);
      }
    });
    tick();
  }

  // other pages: read again, and replace their live parts, when the history grew
  function refetch() {
    if (fetching) { fetchAgain = true; return; }
    fetching = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var parts = document.querySelectorAll("[data-live]");
        for (var i = 0; i < parts.length; i++) {
          var name = parts[i].getAttribute("data-live");
          var replacement = fresh.querySelector('[data-live="' + name + '"]');
          if (replacement) {
            var node = document.importNode(replacement, true);
            parts[i].replaceWith(node);
            localize(node);
          }
        }
        tick();
        body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next change tries again */ })
      .then(function () {
        fetching = false;
        if (fetchAgain) { fetchAgain = false; refetch(); }
      });
  }

  function connect(url) {
    if (!window.EventSource) { setLive("down", "no live updates"); return; }
    var source = new EventSource(url);
    source.addEventListener("open", function () { setLive("live", "live"); });
    source.addEventListener("error", function () { setLive("down", "reconnecting"); });
    source.addEventListener("failure", function () { setLive("down", "database unreachable"); });
    source.addEventListener("snapshot", function (event) {
      var data = JSON.parse(event.data);
      var now = new Date(data.now);
      if (!isNaN(now.getTime())) clockOffset = now.getTime() - Date.now();
      if (data.error) setLive("down", "not live"); else setLive("live", "live");
      if (data.regions) swapRegions(data.regions);
      if (body.getAttribute("data-refresh") && lastMark !== null && data.mark !== lastMark) refetch();
      lastMark = data.mark;
      body.setAttribute("data-version", String(data.version));
    });
  }

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  localize(document);
  tick();
  window.setInterval(tick, 1000);
  var url = body.getAttribute("data-events");
  if (url) connect(url);
})();
