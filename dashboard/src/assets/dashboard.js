// command-coordinator dashboard: live updates, lazy tree, keyboard shortcuts.
// Plain JS served from the binary; no inline code, so the page's
// Content-Security-Policy can forbid everything inline. Every page works
// without it (links instead of expansion, reloads instead of live updates).
(function () {
  "use strict";
  var base = document.body.getAttribute("data-base") || "";
  var MAX_IDS = 500;

  // ---- live updates (server-sent events) ----------------------------------
  var source = null;
  var paused = false;
  var stateEl = document.getElementById("live-state");
  var toggleEl = document.getElementById("live-toggle");

  function setState(text, mode) {
    if (stateEl) { stateEl.textContent = text; }
    document.body.setAttribute("data-live", mode);
  }

  function liveUrl() {
    var seen = {};
    var ids = [];
    document.querySelectorAll("[data-status-of]").forEach(function (el) {
      var id = el.getAttribute("data-status-of");
      if (!seen[id] && ids.length < MAX_IDS) { seen[id] = true; ids.push(id); }
    });
    var overview = document.getElementById("overview-live") !== null;
    if (ids.length === 0 && !overview) { return null; }
    return base + "/live?ids=" + ids.join(",") + (overview ? "&overview=1" : "");
  }

  function stop() {
    if (source) { source.close(); source = null; }
  }

  function start() {
    stop();
    var url = liveUrl();
    if (!url) { return; }
    if (toggleEl) { toggleEl.hidden = false; }
    if (paused) { setState("paused", "paused"); return; }
    if (document.hidden) { setState("paused (tab hidden)", "hidden"); return; }
    source = new EventSource(url);
    setState("connecting…", "connecting");
    source.onopen = function () { setState("● live", "open"); };
    source.onerror = function () { setState("reconnecting…", "reconnecting"); };
    source.addEventListener("status", onStatus);
    source.addEventListener("overview", function (ev) {
      var box = document.getElementById("overview-live");
      if (box) { box.innerHTML = ev.data; }
    });
    source.addEventListener("problem", function (ev) {
      setState("database: " + ev.data, "problem");
    });
  }

  var restartTimer = null;
  function restartSoon() {
    if (restartTimer) { clearTimeout(restartTimer); }
    restartTimer = setTimeout(start, 150);
  }

  function onStatus(ev) {
    var d = JSON.parse(ev.data);
    var status = d.status || "NULL";
    var cls = "status s-" + status.toLowerCase().replace(/_/g, "-");
    var sel = function (attr) { return "[" + attr + "=\"" + CSS.escape(d.id) + "\"]"; };
    document.querySelectorAll(sel("data-status-of")).forEach(function (el) {
      if (el.textContent !== status) {
        el.textContent = status;
        el.className = cls + " changed";
      }
    });
    if (status !== "NOT_STARTED") {
      document.querySelectorAll(sel("data-wait-of")).forEach(function (el) { el.hidden = true; });
    }
    document.querySelectorAll(sel("data-cancel-mark-of")).forEach(function (el) {
      el.hidden = !(d.cancel_requested && !d.ended);
    });
    if (d.ended) {
      document.querySelectorAll(sel("data-cancel-of")).forEach(function (el) { el.hidden = true; });
    }
  }

  function togglePause() {
    paused = !paused;
    if (toggleEl) { toggleEl.textContent = paused ? "Resume" : "Pause"; }
    start();
  }

  if (toggleEl) { toggleEl.addEventListener("click", togglePause); }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { stop(); setState("paused (tab hidden)", "hidden"); } else { start(); }
  });

  // ---- the tree: lazy expansion ------------------------------------------
  function fetchHtml(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      });
  }

  function setExpanded(a, li, expanded) {
    a.setAttribute("data-expanded", expanded ? "true" : "false");
    a.textContent = expanded ? "▾" : "▸";
    li.setAttribute("aria-expanded", expanded ? "true" : "false");
  }

  function toggleNode(a) {
    var li = a.closest("li");
    var group = li.querySelector(":scope > ul");
    if (a.getAttribute("data-expanded") === "true") {
      if (group) { group.hidden = true; }
      setExpanded(a, li, false);
      return;
    }
    if (group) {
      group.hidden = false;
      setExpanded(a, li, true);
      return;
    }
    a.textContent = "…";
    fetchHtml(a.getAttribute("data-children")).then(function (html) {
      var ul = document.createElement("ul");
      ul.setAttribute("role", "group");
      ul.innerHTML = html;
      li.appendChild(ul);
      setExpanded(a, li, true);
      restartSoon();
    }).catch(function () { a.textContent = "!"; });
  }

  function showMore(button) {
    var item = button.closest("li");
    button.textContent = "Loading…";
    fetchHtml(button.getAttribute("data-more")).then(function (html) {
      var holder = document.createElement("ul");
      holder.innerHTML = html;
      var nodes = Array.prototype.slice.call(holder.children);
      nodes.forEach(function (n) { item.parentNode.insertBefore(n, item); });
      item.remove();
      restartSoon();
    }).catch(function () { button.textContent = "Failed: try again"; });
  }

  document.addEventListener("click", function (e) {
    var expand = e.target.closest("a.expand[data-children]");
    if (expand) { e.preventDefault(); toggleNode(expand); return; }
    var more = e.target.closest("a[data-more]");
    if (more) { e.preventDefault(); showMore(more); }
  });

  // ---- keyboard ------------------------------------------------------------
  var selected = null;
  var pendingG = false;

  function navRows() {
    return Array.prototype.filter.call(document.querySelectorAll("[data-nav]"), function (el) {
      return el.offsetParent !== null;
    });
  }

  function move(step) {
    var rows = navRows();
    if (rows.length === 0) { return; }
    var i = selected ? rows.indexOf(selected) : -1;
    i = Math.max(0, Math.min(rows.length - 1, i + step));
    if (selected) { selected.classList.remove("selected"); }
    selected = rows[i];
    selected.classList.add("selected");
    selected.scrollIntoView({ block: "nearest" });
  }

  function toggleHelp(show) {
    var help = document.getElementById("help");
    if (help) { help.hidden = show === undefined ? !help.hidden : !show; }
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var t = e.target;
    var typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
    if (typing) {
      if (e.key === "Escape") { t.blur(); }
      return;
    }
    if (pendingG) {
      pendingG = false;
      if (e.key === "o") { location.href = base + "/"; return; }
      if (e.key === "c") { location.href = base + "/commands"; return; }
    }
    switch (e.key) {
      case "/": {
        var search = document.getElementById("search");
        if (search) { e.preventDefault(); search.focus(); search.select(); }
        break;
      }
      case "j": move(1); break;
      case "k": move(-1); break;
      case "Enter":
        if (selected && selected.getAttribute("data-href")) { location.href = selected.getAttribute("data-href"); }
        break;
      case "e": {
        var a = selected && selected.querySelector(":scope > .node a.expand");
        if (a) { toggleNode(a); }
        break;
      }
      case "p": togglePause(); break;
      case "g": pendingG = true; break;
      case "?": toggleHelp(); break;
      case "Escape": toggleHelp(false); break;
      default: break;
    }
  });

  start();
}());
