/* The Safety page's "Now" panel: today's emergencies and the last hour's assistance requests,
 * pushed by the server over one EventSource (/api/now/stream). Made to run for days on a wall
 * screen: lists pruned at every tick, one timer, the server's clock for "2 min ago", and a
 * connection that is reopened when it falls silent. "Live" is proven, never assumed: only while
 * the server's listener has lately heard the database (each snapshot's and tick's `heard`). */
(() => {
  "use strict";

  const panel = document.getElementById("now");
  if (!panel) return;

  const STREAM_FILTERS = ["exhibition", "floor", "request"];
  const EMERGENCY = 1;
  // Each list keeps at most this many, newest first, as the server's snapshot does: a feed far
  // busier than a museum's (a benchmark's) must not grow the page without bound.
  const MOST_SHOWN = 500;
  // The server ticks every 3 s: 12 s without any event means the connection is dead, even if
  // the browser has not noticed (a proxy or a sleeping laptop can hold a socket open).
  const SILENCE_MS = 12_000;
  // Live only while the listener's last proof that it hears the database is this recent: it
  // proves itself every 2 s, and a tick brings its age every 3 s.
  const HEARD_MS = 8_000;
  const RETRY_MS = 3_000; // when EventSource gives up by itself (an HTTP error), as the server's retry
  const ACKNOWLEDGED_KEY = "lmnh.now.acknowledged";
  const SOUND_KEY = "lmnh.now.sound";
  const LONDON = "Europe/London";
  const londonClock = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const londonDay = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, year: "numeric", month: "2-digit", day: "2-digit" });
  const baseTitle = document.title;

  const connection = panel.querySelector(".now-connection");
  const alertBox = panel.querySelector(".now-alert");
  const soundButton = panel.querySelector(".now-sound");
  const lists = { emergency: panel.querySelector('[data-list="emergency"]'), assistance: panel.querySelector('[data-list="assistance"]') };
  const counts = { emergency: panel.querySelector('[data-count="emergency"]'), assistance: panel.querySelector('[data-count="assistance"]') };
  const empties = { emergency: panel.querySelector('[data-empty="emergency"]'), assistance: panel.querySelector('[data-empty="assistance"]') };

  const shown = new Map(); // request id -> { item, element, at: its instant in ms, ago: its label }
  let source = null;
  let streamKey = "";
  let lastId = null; // the highest request id seen: `after` when the panel reopens the stream
  let lastEventAt = 0; // performance.now() of the last event of any kind
  let closedAt = null; // performance.now() when EventSource gave up by itself
  let synced = false; // this stream's snapshot was read while the listener heard, and no `stale` since
  let heardUntil = 0; // performance.now() until which the listener's last proof holds
  let offlineSince = null; // not live since (the server's clock)
  let offlineReason = "";
  let recentMinutes = 60;
  let truncated = false; // the server or the panel left out older requests
  let clockBase = null; // the server's clock: { server: ms, at: performance.now() } at the last event
  let acknowledged = loadAcknowledged();
  let soundOn = readStorage(SOUND_KEY) === "on";
  let audio = null;
  let tonesPlayed = 0;

  // ---- The server's clock: a wall screen's own clock may be wrong -------------------------
  function setClock(iso) {
    const server = Date.parse(iso);
    if (Number.isFinite(server)) clockBase = { server, at: performance.now() };
  }

  const serverNow = () => (clockBase ? clockBase.server + (performance.now() - clockBase.at) : null);

  function isoDay(ms) {
    const parts = Object.fromEntries(londonDay.formatToParts(ms).map((part) => [part.type, part.value]));
    return `${parts.year}-${parts.month}-${parts.day}`;
  }

  function ago(ms) {
    const seconds = Math.round(ms / 1000);
    if (seconds < 10) return "just now";
    if (seconds < 60) return `${seconds} s ago`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 90) return `${minutes} min ago`;
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min ago`;
  }

  // ---- Storage: the user's choices survive a reload; a browser may refuse storage ----------
  function readStorage(key) {
    try {
      return localStorage.getItem(key);
    } catch (error) {
      return null;
    }
  }

  function writeStorage(key, value) {
    try {
      localStorage.setItem(key, value);
    } catch (error) {
      console.warn(`cannot remember ${key}: ${error.message}`);
    }
  }

  function loadAcknowledged() {
    try {
      const stored = JSON.parse(readStorage(ACKNOWLEDGED_KEY) || "null");
      if (stored && typeof stored.day === "string" && Array.isArray(stored.ids)) return { day: stored.day, ids: new Set(stored.ids.map(Number)) };
    } catch (error) {
      // A damaged value is as good as none.
    }
    return { day: "", ids: new Set() };
  }

  /** Keep only today's acknowledgements: yesterday's emergencies have left the panel. */
  function pruneAcknowledged(today) {
    if (acknowledged.day === today) return;
    acknowledged = { day: today, ids: new Set() };
    saveAcknowledged();
  }

  function saveAcknowledged() {
    writeStorage(ACKNOWLEDGED_KEY, JSON.stringify({ day: acknowledged.day, ids: [...acknowledged.ids] }));
  }

  // ---- The lists -------------------------------------------------------------------------
  const kindOf = (item) => (item.request_value === EMERGENCY ? "emergency" : "assistance");
  const isOpen = (entry) => kindOf(entry.item) === "emergency" && !acknowledged.ids.has(entry.item.id);
  const place = (item) => `${item.public_id} ${item.exhibition_name}, ${item.floor_name === "Vault" ? "Vault" : `floor ${item.floor_name}`}`;

  function span(className, text) {
    const element = document.createElement("span");
    element.className = className;
    element.textContent = text;
    return element;
  }

  function icon() {
    const element = span("now-icon", "⚠");
    element.setAttribute("aria-hidden", "true");
    return element;
  }

  function buildItem(item) {
    const element = document.createElement("li");
    element.className = "now-item";
    element.dataset.requestId = String(item.id);
    element.dataset.eventAt = item.event_at;
    element.dataset.type = kindOf(item);
    const type = span("now-type", item.request_description);
    if (item.request_value === EMERGENCY) type.prepend(icon(), " ");
    const where = span("now-where", "");
    const id = document.createElement("strong");
    id.textContent = item.public_id;
    where.append(id, ` ${item.exhibition_name}`, span("now-floor", item.floor_name === "Vault" ? "Vault" : `Floor ${item.floor_name}`));
    const time = document.createElement("time");
    time.dateTime = item.event_at;
    time.textContent = item.london_time;
    const when = span("now-when", "");
    when.append(time, " · ", span("now-ago", ""));
    element.append(type, where, when);
    if (item.request_value === EMERGENCY) element.append(span("now-action", ""));
    return element;
  }

  /** The emergency's last part: an Acknowledge button while open, the word once acknowledged. */
  function renderAction(entry) {
    const action = entry.element.querySelector(".now-action");
    if (!action) return;
    const open = isOpen(entry);
    entry.element.dataset.open = String(open);
    if (open && !action.querySelector("button")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "now-ack";
      button.textContent = "Acknowledge";
      button.setAttribute("aria-label", `Acknowledge the emergency at ${place(entry.item)}, ${entry.item.london_time}`);
      button.addEventListener("click", () => acknowledge(entry.item.id));
      action.replaceChildren(button);
    } else if (!open) {
      action.replaceChildren(span("now-acknowledged", "✓ Acknowledged"));
    }
  }

  const newerThan = (a, b) => a.at > b.at || (a.at === b.at && a.item.id > b.item.id);

  /** Show one request in its place; true when it is newly shown (not already there, and not
   * older than the list's newest MOST_SHOWN). */
  function show(item) {
    const existing = shown.get(item.id);
    if (existing) return false;
    const element = buildItem(item);
    const entry = { item, element, at: Date.parse(item.event_at), ago: element.querySelector(".now-ago") };
    const list = lists[kindOf(item)];
    // Insert in place (newest first) rather than re-sorting, so that no focused button moves.
    let before = null;
    for (const other of list.children) {
      if (newerThan(entry, shown.get(Number(other.dataset.requestId)))) {
        before = other;
        break;
      }
    }
    list.insertBefore(element, before);
    shown.set(item.id, entry);
    renderAction(entry);
    while (list.children.length > MOST_SHOWN) {
      forget(Number(list.lastElementChild.dataset.requestId));
      truncated = true;
    }
    return shown.has(item.id);
  }

  function forget(id) {
    const entry = shown.get(id);
    if (!entry) return;
    if (entry.element.contains(document.activeElement)) panel.querySelector("#now-title").focus();
    entry.element.remove();
    shown.delete(id);
  }

  function clearAll() {
    for (const id of [...shown.keys()]) forget(id);
    lastId = null;
  }

  function acknowledge(id) {
    const entry = shown.get(id);
    if (!entry) return;
    acknowledged.ids.add(id);
    saveAcknowledged();
    const hadFocus = entry.element.contains(document.activeElement);
    renderAction(entry);
    entry.element.classList.remove("now-new");
    if (hadFocus) {
      // The button is gone: on to the next open emergency, or back to the panel's heading.
      const next = lists.emergency.querySelector(".now-ack");
      (next || panel.querySelector("#now-title")).focus();
    }
    summarise(false);
  }

  /** Title, counts, empty states and the alert, from what is shown; `fresh` when a new
   * emergency just arrived (the alert is then re-announced and animated). */
  function summarise(fresh) {
    const entries = [...shown.values()];
    const open = entries.filter(isOpen).sort((a, b) => (newerThan(a, b) ? -1 : 1));
    const emergencies = entries.filter((entry) => kindOf(entry.item) === "emergency").length;
    const assistance = entries.length - emergencies;
    document.title = open.length ? `(${open.length}) ⚠ ${baseTitle}` : baseTitle;
    counts.emergency.textContent = emergencies ? `(${open.length} open of ${emergencies})` : "";
    counts.assistance.textContent = assistance ? `(${assistance})` : "";
    empties.emergency.hidden = emergencies > 0;
    empties.assistance.hidden = assistance > 0;

    if (!open.length) {
      alertBox.replaceChildren();
      delete alertBox.dataset.new;
      return;
    }
    const newest = open[0].item;
    const others = open.length > 1 ? ` ${open.length} open emergencies in all.` : "";
    const text = `Emergency at ${place(newest)}, at ${newest.london_time} London time.${others}`;
    // A live region speaks every change: touch it only when what it says changes.
    if (alertBox.dataset.text !== text || fresh) {
      alertBox.replaceChildren(icon(), span("now-alert-text", text));
      alertBox.dataset.text = text;
    }
    if (fresh) {
      // Restart the animation: the attribute's removal and return is a new start.
      delete alertBox.dataset.new;
      void alertBox.offsetWidth;
      alertBox.dataset.new = "true";
    }
  }

  /** Drop what has left the panel's window, refresh "N min ago"; run by the one timer. */
  function prune() {
    const now = serverNow();
    if (now === null) return;
    const today = isoDay(now);
    pruneAcknowledged(today);
    let dropped = false;
    for (const [id, entry] of shown) {
      const gone = kindOf(entry.item) === "emergency" ? entry.item.london_date !== today : now - entry.at > recentMinutes * 60_000;
      if (gone) {
        forget(id);
        dropped = true;
        continue;
      }
      const text = ago(now - entry.at);
      if (entry.ago.textContent !== text) entry.ago.textContent = text;
    }
    if (dropped) summarise(false);
  }

  // ---- The stream --------------------------------------------------------------------------
  function streamQuery() {
    const current = new URLSearchParams(location.search);
    const query = new URLSearchParams();
    for (const key of STREAM_FILTERS) for (const value of current.getAll(key)) query.append(key, value);
    return query;
  }

  function setState(state, text) {
    if (panel.dataset.state !== state) panel.dataset.state = state;
    if (connection.textContent !== text) connection.textContent = text;
  }

  function connect(after) {
    source?.close();
    const query = streamQuery();
    streamKey = query.toString();
    panel.dataset.request = query.get("request") || "";
    if (after !== null) query.set("after", String(after));
    source = new EventSource(`/api/now/stream?${query}`);
    lastEventAt = performance.now();
    closedAt = null;
    synced = false; // until this stream's snapshot says the listener hears
    const current = source;
    const on = (name, handle) =>
      current.addEventListener(name, (event) => {
        if (current !== source) return;
        lastEventAt = performance.now();
        const id = Number(event.lastEventId);
        if (event.lastEventId !== "" && Number.isInteger(id)) lastId = Math.max(lastId ?? id, id);
        handle(JSON.parse(event.data));
      });
    on("snapshot", snapshot);
    on("request", (item) => arrived([item]));
    on("tick", (body) => {
      setClock(body.now);
      heard(body.heard);
      judge();
    });
    on("stale", (body) => {
      synced = false;
      goStale(body.error);
    });
    on("offline", (body) => goOffline(body.error));
    on("signed-out", () => window.lmnh.signIn());
    current.addEventListener("error", () => {
      if (current !== source) return;
      if (current.readyState === EventSource.CLOSED) closedAt = performance.now();
      goOffline(null);
    });
  }

  /** The listener's proof: `age` seconds old when sent, or null (it cannot hear). */
  function heard(age) {
    heardUntil = typeof age === "number" ? performance.now() + HEARD_MS - age * 1000 : 0;
  }

  const isLive = () => synced && performance.now() < heardUntil;

  /** Live, or not live since the proof lapsed: never on the web server's ticks alone. */
  function judge() {
    if (isLive()) sayLive();
    else goStale(synced ? "no word from the database for a few seconds" : "the live feed cannot hear the database");
  }

  /** The stream is open but the server cannot prove it hears the database: what is shown may
   * be missing requests, until a fresh snapshot arrives. */
  function goStale(reason) {
    offlineSince ??= serverNow() ?? Date.now();
    setState("reconnecting", `Reconnecting… not live since ${londonClock.format(offlineSince)}: ${reason}`);
  }

  /** Say since when the panel has heard nothing, and why when the server said (the stream's
   * error that follows keeps the reason). */
  function goOffline(reason) {
    synced = false;
    offlineSince ??= serverNow() ?? Date.now();
    if (reason) offlineReason = `: ${reason}`;
    setState("offline", `Offline — reconnecting… (since ${londonClock.format(offlineSince)}${offlineReason})`);
  }

  /** The first event of every connection: it replaces the lists (merging by id, so that what
   * stays keeps its element and its focus); the ids it lists as missed arrived while the panel
   * was away, and are alerted as new. It makes the panel live only if read while the listener
   * heard the database. */
  function snapshot(body) {
    setClock(body.now);
    synced = typeof body.heard === "number";
    heard(body.heard);
    recentMinutes = body.recent_minutes ?? recentMinutes;
    pruneAcknowledged(body.today);
    const listed = new Set(body.requests.map((item) => item.id));
    for (const id of [...shown.keys()]) if (!listed.has(id)) forget(id);
    const missed = new Set(body.missed || []);
    const fresh = [];
    for (const item of body.requests) {
      if (show(item) && missed.has(item.id)) fresh.push(item);
    }
    truncated = body.truncated;
    prune();
    alertNew(fresh);
    judge();
  }

  function arrived(items) {
    const fresh = items.filter((item) => show(item));
    prune();
    alertNew(fresh);
    if (isLive()) sayLive(); // the truncation note
  }

  function sayLive() {
    offlineSince = null;
    offlineReason = "";
    setState("live", truncated ? `Live · the newest ${MOST_SHOWN} of each kind shown` : "Live");
  }

  function alertNew(items) {
    const emergencies = items.filter((item) => shown.has(item.id) && isOpen(shown.get(item.id)));
    for (const item of emergencies) shown.get(item.id).element.classList.add("now-new");
    summarise(emergencies.length > 0);
    if (emergencies.length) playTone();
  }

  /** The one timer: prune and age the lists, stop saying live when the proof has lapsed
   * (events may stop arriving at all), and reopen a stream that went silent or that
   * EventSource gave up on (it does on an HTTP error answer). */
  function everySecond() {
    prune();
    if (!source) return;
    if (panel.dataset.state === "live" && !isLive()) judge();
    if (closedAt !== null && performance.now() - closedAt > RETRY_MS) {
      closedAt = null;
      reopen();
    } else if (performance.now() - lastEventAt > SILENCE_MS) {
      goOffline(`no word from the server for ${SILENCE_MS / 1000} s`);
      connect(lastId);
    }
  }

  /** EventSource does not say why it gave up: /api/now, which takes the same filters, does.
   * Filters it cannot read (a hand-edited address) are said once, not retried for ever. */
  async function reopen() {
    const current = source;
    try {
      const response = await fetch(`/api/now?${streamQuery()}`, { cache: "no-store" });
      if (response.status === 400) {
        const body = await response.json();
        if (current !== source) return;
        source.close();
        source = null;
        setState("error", `${body.error[0].toUpperCase()}${body.error.slice(1)}.`);
        return;
      }
    } catch (error) {
      // Not answering: reconnect as usual, and stay offline until it does.
    }
    if (current === source) connect(lastId);
  }

  // ---- Sound: off until asked for; browsers allow it only after a click -------------------
  function ensureAudio() {
    if (!audio) {
      audio = new AudioContext();
      audio.addEventListener("statechange", renderSound);
    }
    if (audio.state !== "running") audio.resume().catch(() => renderSound());
  }

  function renderSound() {
    soundButton.setAttribute("aria-pressed", String(soundOn));
    soundButton.querySelector(".now-sound-state").textContent = soundOn ? "on" : "off";
    let note = "";
    if (soundOn && !audio) note = "— blocked by the browser until you click the page";
    else if (soundOn && audio.state !== "running") note = "— suspended by the browser: click the page to resume";
    soundButton.querySelector(".now-sound-note").textContent = note;
  }

  /** Two short alternating pips, generated: no file to load, nothing to autoplay. */
  function playTone() {
    if (!soundOn || !audio || audio.state !== "running") return;
    const start = audio.currentTime + 0.02;
    const oscillator = audio.createOscillator();
    const gain = audio.createGain();
    oscillator.type = "sine";
    gain.gain.setValueAtTime(0, start);
    for (let pip = 0; pip < 4; pip++) {
      const at = start + pip * 0.2;
      oscillator.frequency.setValueAtTime(pip % 2 ? 660 : 880, at);
      gain.gain.linearRampToValueAtTime(0.3, at + 0.02);
      gain.gain.setValueAtTime(0.3, at + 0.14);
      gain.gain.linearRampToValueAtTime(0, at + 0.16);
    }
    oscillator.connect(gain).connect(audio.destination);
    oscillator.start(start);
    oscillator.stop(start + 0.85);
    tonesPlayed += 1;
    document.body.dataset.tonesPlayed = String(tonesPlayed);
  }

  soundButton.addEventListener("click", () => {
    soundOn = !soundOn;
    writeStorage(SOUND_KEY, soundOn ? "on" : "off");
    if (soundOn) ensureAudio(); // inside the click: the one moment a browser lets sound start
    renderSound();
  });
  // Sound remembered as on from an earlier visit, or suspended: a click or key on the page starts it.
  const allow = () => {
    if (soundOn && audio?.state !== "running") {
      ensureAudio();
      renderSound();
    }
  };
  document.addEventListener("pointerdown", allow, { capture: true });
  document.addEventListener("keydown", allow, { capture: true });

  // The page's filters changed (dashboard.js): a new stream, and a fresh snapshot, for them.
  document.addEventListener("filterschange", () => {
    if (streamQuery().toString() === streamKey) return;
    clearAll();
    summarise(false);
    setState("connecting", "Connecting…");
    connect(null);
  });

  document.body.dataset.tonesPlayed = "0";
  renderSound();
  summarise(false);
  connect(null);
  setInterval(everySecond, 1000);
})();
