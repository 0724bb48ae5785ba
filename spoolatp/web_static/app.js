// spoolatp dashboard: refresh the page's #live part in place, without a full reload.
// The server escapes everything it renders; nothing here turns text into markup
// except the server's own page, parsed by DOMParser (which runs no script).
"use strict";
(function () {
  let timer = null;
  let generation = 0;
  const box = document.getElementById("auto-refresh");
  const status = document.getElementById("refresh-status");

  function seconds() {
    const live = document.getElementById("live");
    const s = live ? parseFloat(live.dataset.refresh) : 0;
    return s > 0 ? s : 0;
  }

  function say(text) {
    if (status) status.textContent = text;
  }

  function schedule() {
    clearTimeout(timer);
    const s = seconds();
    if (s && (!box || box.checked)) timer = setTimeout(refresh, s * 1000);
  }

  function swap(fresh) {
    const old = document.getElementById("live");
    if (!old) return;
    // keep the scroll position of boxes such as the log; follow the end if it was shown
    const kept = {};
    old.querySelectorAll("[data-keep-scroll][id]").forEach(function (el) {
      kept[el.id] = { top: el.scrollTop, end: el.scrollTop + el.clientHeight >= el.scrollHeight - 4 };
    });
    const node = document.importNode(fresh, true);
    old.replaceWith(node);
    node.querySelectorAll("[data-keep-scroll][id]").forEach(function (el) {
      const k = kept[el.id];
      if (k) el.scrollTop = k.end ? el.scrollHeight : k.top;
    });
    document.dispatchEvent(new CustomEvent("spoolatp:refreshed"));
  }

  async function refresh() {
    if (document.hidden) return; // visibilitychange starts again
    const mine = ++generation;
    try {
      const response = await fetch(location.href, {
        headers: { Accept: "text/html" },
        cache: "no-store",
        credentials: "same-origin",
      });
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("live");
      if (mine !== generation) return;
      if (fresh) {
        swap(fresh);
        document.title = doc.title;
        say((response.ok ? "updated " : "HTTP " + response.status + ", ") + new Date().toLocaleTimeString());
      } else {
        say("update failed: HTTP " + response.status);
      }
    } catch (err) {
      say("dashboard unreachable; retrying");
    }
    if (mine === generation) schedule();
  }

  if (box) box.addEventListener("change", function () { if (box.checked) refresh(); else clearTimeout(timer); });
  document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
  schedule();
})();
