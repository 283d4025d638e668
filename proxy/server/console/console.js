// The factory console: the state from /console/state, then each attempt
// from /console/events as the factory record gets it. Every string a
// device sent (board, hardware ID, reason) is set as text (textContent),
// never as markup; the page's policy allows no other script than this.
"use strict";

(function () {
  const MAX_RECENT = 50;      // as many as the state carries
  const MAX_STATIONS = 6;     // station cards on screen
  const REFRESH_MS = 400;     // at most one state fetch per this, after events

  const $ = (id) => document.getElementById(id);
  let recent = [];            // attempts, newest first, unique by seq
  let stations = new Map();   // station label -> its last attempt
  let refreshTimer = null;
  let fetching = false, again = false;
  let stateSeq = 0;           // the head of the last state shown

  function text(el, s) { el.textContent = s == null ? "" : String(s); }

  function clock(t) {
    const d = new Date(t);
    if (isNaN(d)) return "";
    return d.toLocaleTimeString([], { hour12: false });
  }

  function duration(ns) {
    let s = Math.round(ns / 1e9);
    if (s <= 0) return "—";
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60);
    return h > 0 ? `${h} h ${m} min` : `${m} min`;
  }

  function ms(us) {
    const v = us / 1000;
    return v >= 100 ? `${Math.round(v)} ms` : `${v.toFixed(1)} ms`;
  }

  function stationOf(a) { return a.station || a.source || "?"; }

  function verdict(a) {
    return a.result === "enrolled" ? "enrolled" : a.result === "refused" ? "refused" : "failed";
  }

  // attemptItem renders one attempt.
  function attemptItem(a, fresh) {
    const li = $("t-attempt").content.firstElementChild.cloneNode(true);
    li.classList.add(verdict(a));
    if (fresh) li.classList.add("new");
    li.dataset.seq = a.seq;
    const q = (sel) => li.querySelector(sel);
    text(q(".mark"), a.result === "enrolled" ? "✓" : "✗");
    text(q(".result"), a.result);
    text(q(".board"), a.board || "");
    text(q(".serial"), a.serial ? "serial " + a.serial : "");
    text(q(".hwid"), a.hardwareId ? "hw " + a.hardwareId : "");
    const time = q("time");
    text(time, clock(a.time));
    time.dateTime = a.time;
    text(q(".station"), stationOf(a));
    text(q(".batch"), a.batch ? "batch " + a.batch : "");
    text(q(".steps"), (a.steps || []).map((s) => `${s.name} ${ms(s.us)}`).join(" · "));
    if (a.result === "enrolled") {
      q(".why").remove();
    } else {
      text(q(".what"), a.what || "");
      text(q(".do"), a.do ? "What to do: " + a.do : "");
      text(q(".reason"), a.reason || "");
    }
    return li;
  }

  function renderAttempts(freshSeq) {
    const list = $("attempts");
    const items = recent.map((a) => attemptItem(a, a.seq === freshSeq));
    list.replaceChildren(...items);
    $("empty").hidden = recent.length > 0;
  }

  function renderStations() {
    const box = $("stations");
    const cards = [];
    for (const [label, a] of stations) {
      if (cards.length >= MAX_STATIONS) break;
      const card = $("t-station").content.firstElementChild.cloneNode(true);
      card.classList.add(verdict(a));
      text(card.querySelector(".name"), label);
      text(card.querySelector(".verdict"), (a.result === "enrolled" ? "✓ " : "✗ ") + a.result.toUpperCase());
      text(card.querySelector(".who"), [a.board, a.serial || a.hardwareId, clock(a.time)].filter(Boolean).join(" · "));
      text(card.querySelector(".do"), a.result === "enrolled" ? "" : (a.what || "") + " " + (a.do || ""));
      cards.push(card);
    }
    box.replaceChildren(...cards);
  }

  // remember adds an attempt (from the stream or a state) to the list and
  // its station's card; false if it was there already.
  function remember(a) {
    if (recent.some((r) => r.seq === a.seq)) return false;
    recent.push(a);
    recent.sort((x, y) => y.seq - x.seq);
    if (recent.length > MAX_RECENT) recent.length = MAX_RECENT;
    const label = stationOf(a);
    const had = stations.get(label);
    if (!had || had.seq < a.seq) {
      stations.delete(label);
      stations = new Map([[label, a], ...stations]);
    }
    return true;
  }

  function rel(t) {
    return t ? new Date(t).toLocaleString([], { hour12: false }) : "";
  }

  function windowText(b, now) {
    const nb = b.notBefore ? new Date(b.notBefore) : null;
    const na = b.notAfter ? new Date(b.notAfter) : null;
    if (nb && now < nb) return `opens ${rel(b.notBefore)}`;
    if (na && now > na) return `closed ${rel(b.notAfter)}`;
    if (na) return `open until ${rel(b.notAfter)}`;
    return "open";
  }

  function renderBatches(st) {
    const now = new Date(st.at);
    const list = $("batch-list");
    const batches = st.batches || [];
    $("no-batches").hidden = batches.length > 0;
    list.replaceChildren(...batches.map((b) => {
      const el = $("t-batch").content.firstElementChild.cloneNode(true);
      const q = (sel) => el.querySelector(sel);
      el.dataset.batch = b.name;
      text(q(".name"), b.name);
      text(q(".window"), windowText(b, now));
      const bar = q(".bar");
      bar.setAttribute("aria-valuemax", String(b.planned || 0));
      bar.setAttribute("aria-valuenow", String(b.enrolled));
      q(".fill").style.width = b.planned > 0 ? Math.min(100, (100 * b.enrolled) / b.planned).toFixed(1) + "%" : "0";
      text(q(".planned"), b.planned);
      text(q(".enrolled"), b.enrolled);
      text(q(".remaining"), b.remaining);
      text(q(".retrying"), b.retrying);
      const refused = Object.entries(b.refusedBy || {}).filter(([, n]) => n > 0)
        .sort((x, y) => y[1] - x[1]).map(([rule, n]) => `${n} ${rule}`);
      text(q(".refused"), refused.length ? refused.join(", ") : "0");
      text(q(".failed"), b.failed);
      text(q(".yield"), b.attempts > 0 ? (100 * b.firstPassYield).toFixed(1) + " %" : "—");
      text(q(".rate"), `${b.perHour} / h`);
      text(q(".eta"), b.remaining === 0 ? "done" : duration(b.etaNs));
      text(q(".quota"), b.quota > 0 ? b.quota : `${b.planned} (the manifest)`);
      const href = (fmt) => `/console/report?batch=${encodeURIComponent(b.name)}&format=${fmt}`;
      q("a.csv").href = href("csv");
      q("a.json").href = href("json");
      return el;
    }));
  }

  function healthItem(ok, label, detail) {
    const li = document.createElement("li");
    li.className = ok === true ? "ok" : ok === false ? "bad" : "warn";
    const b = document.createElement("b");
    text(b, label);
    li.append(b, " " + detail);
    return li;
  }

  function renderHealth(st) {
    const h = st.health;
    text($("head-seq"), "#" + st.headSeq);
    text($("head-hash"), st.headHash);
    if (!h) return;
    const now = new Date(st.at);
    const items = [];
    for (const u of h.upstreams || []) {
      items.push(u.ok ? healthItem(true, u.name, `answers (${u.latencyMs.toFixed(0)} ms)`)
        : healthItem(false, u.name, "does not answer: " + (u.error || "")));
    }
    for (const c of h.certificates || []) {
      const left = new Date(c.notAfter) - now;
      const life = new Date(c.notAfter) - new Date(c.notBefore);
      const hours = (left / 3.6e6).toFixed(1);
      const ok = left <= 0 ? false : (left < life / 3 ? null : true);
      items.push(healthItem(ok, c.name + " certificate", left <= 0 ? `expired ${rel(c.notAfter)}` : `ends ${rel(c.notAfter)} (in ${hours} h)`));
    }
    const p = h.provisioner || {};
    items.push(p.ok ? healthItem(true, "provisioner", `${p.name}: step-ca has it with this key` + (p.lifetime ? `; device certificates for ${p.lifetime}` : ""))
      : healthItem(false, "provisioner", `${p.name || ""}: ${p.error || "not checked"}`));
    if (h.clockOffsetMs == null) {
      items.push(healthItem(null, "clock", "offset to core unknown (core did not answer)"));
    } else {
      const s = h.clockOffsetMs / 1000;
      const ok = Math.abs(s) <= 2 ? true : Math.abs(s) <= 30 ? null : false;
      items.push(healthItem(ok, "clock", `core is ${s >= 0 ? "+" : ""}${s.toFixed(0)} s from this proxy (±1 s)`));
    }
    const r = h.record || {};
    items.push(r.verified ? healthItem(true, "factory record", `chain verified through #${r.verifiedSeq} at ${clock(r.verifiedAt)}`)
      : healthItem(false, "factory record", "chain does not verify: " + (r.error || "")));
    $("health-list").replaceChildren(...items);
  }

  function render(st) {
    text($("day"), st.day || "");
    for (const r of ["enrolled", "refused", "failed"]) text($("n-" + r), (st.counts || {})[r] || 0);
    renderBatches(st);
    renderHealth(st);
  }

  async function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      const resp = await fetch("/console/state", { cache: "no-store" });
      if (!resp.ok) throw new Error(`the proxy answered HTTP ${resp.status}`);
      const st = await resp.json();
      // The state is exact: its last attempts replace the list, and any
      // newer attempt the stream brought since stays on top.
      const newer = recent.filter((a) => a.seq > st.headSeq);
      recent = [];
      if (st.headSeq < stateSeq) stations = new Map(); // another record: start over
      for (const a of [...(st.recent || [])].reverse()) remember(a);
      for (const a of newer.reverse()) remember(a);
      stateSeq = st.headSeq;
      render(st);
      renderAttempts(null);
      renderStations();
      $("banner").hidden = true;
      document.body.dataset.loaded = "true";
    } catch (err) {
      text($("banner"), "Cannot read the proxy's state: " + err.message + ". Retrying…");
      $("banner").hidden = false;
      schedule(2000);
    } finally {
      fetching = false;
      if (again) { again = false; schedule(REFRESH_MS); }
    }
  }

  function schedule(delay) {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, delay);
  }

  function connect() {
    const conn = $("conn");
    const es = new EventSource("/console/events");
    es.onopen = () => {
      conn.dataset.state = "live";
      text(conn, "live");
      refresh(); // whatever happened while disconnected
    };
    es.onerror = () => {
      conn.dataset.state = "reconnecting";
      text(conn, "reconnecting…");
      // EventSource tries again by itself (the stream says retry: 2000);
      // a stream the server closed for good is opened anew.
      if (es.readyState === EventSource.CLOSED) {
        setTimeout(connect, 2000);
      }
    };
    es.addEventListener("attempt", (ev) => {
      let a;
      try { a = JSON.parse(ev.data); } catch (e) { return; }
      if (remember(a)) {
        renderAttempts(a.seq);
        renderStations();
        document.body.dataset.lastSeq = String(a.seq);
      }
      schedule(REFRESH_MS); // counts and batches, exact from the state
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    refresh();
    connect();
  });
})();
