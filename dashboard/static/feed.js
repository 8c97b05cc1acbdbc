/* The Feed page: rejected messages and the pipeline's state from /api/feed/*, refreshed in
 * place, with loading, empty and error states per section. Everything a kiosk sent (and
 * everything else from the server) is put into the page as text (textContent, text nodes),
 * never parsed as HTML. */
(() => {
  "use strict";

  // Okabe-Ito, which colour-blind viewers can tell apart; shapes and dashes tell lines apart too.
  const COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#999999", "#F0E442", "#D55E00"];
  const SHAPES = ["circle", "square", "diamond", "cross", "triangle-up", "triangle-down", "triangle-right", "triangle-left", "wedge"];
  const DASHES = [[1, 0], [8, 4], [2, 3], [12, 3, 2, 3], [4, 4]];
  const DEFAULT_WINDOW = "24h";
  const WINDOW_LABELS = { "1h": "the last hour", "24h": "the last 24 hours", "7d": "the last 7 days" };
  const { REFRESH_CHOICES, getJson, describeRefresh, vegaView } = window.lmnh;
  // The state's word and symbol carry it; the colour only repeats them.
  const STATES = {
    running: { symbol: "●", label: "Running" },
    behind: { symbol: "▲", label: "Behind" },
    stalled: { symbol: "◆", label: "Stalled" },
    stopped: { symbol: "■", label: "Stopped" },
    never_run: { symbol: "○", label: "Never run" },
  };
  const CLOCKS_DIFFER_MS = 60_000;
  const LONDON = "Europe/London";
  const clock = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const dayAndTime = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const londonParts = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  const number = new Intl.NumberFormat("en-GB");
  const rate = new Intl.NumberFormat("en-GB", { maximumFractionDigits: 2 });
  const percent = new Intl.NumberFormat("en-GB", { style: "percent", maximumFractionDigits: 1 });

  let serverRefresh = null; // the server's --refresh-seconds, once /api/meta has answered
  let databaseNow = null; // the latest answer's clock: a wall screen's own clock may be wrong
  let timer = null;
  let cycle = 0;
  const views = new Map(); // section -> { key, view }

  // ---- The URL is the state --------------------------------------------------------------
  const params = () => new URLSearchParams(location.search);

  function setParams(update) {
    const next = params();
    for (const [key, value] of Object.entries(update)) {
      next.delete(key);
      if (value !== "" && value != null) next.set(key, value);
    }
    history.replaceState(null, "", next.toString() ? `?${next}` : location.pathname);
  }

  const windowName = () => params().get("window") || DEFAULT_WINDOW;

  const refreshSeconds = () => window.lmnh.refreshSeconds(serverRefresh);

  // ---- Building the page from text -------------------------------------------------------
  /* An element with text children only: strings become text nodes, never markup. */
  function el(tag, className, ...children) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    element.append(...children.filter((child) => child !== null && child !== undefined));
    return element;
  }

  function table(className, headings, rows) {
    const head = el("thead", null, el("tr", null, ...headings.map(([text, cls]) => el("th", cls, text))));
    return el("table", `ranked ${className}`, head, el("tbody", null, ...rows));
  }

  const cell = (className, ...children) => el("td", className, ...children);

  /* An instant as the museum's wall clock, for a chart's UTC scale: Vega-Lite only knows the
   * browser's zone and UTC, and a wall screen's zone is not necessarily London's. */
  function londonWall(iso) {
    const part = Object.fromEntries(londonParts.formatToParts(new Date(iso)).map((p) => [p.type, p.value]));
    return Date.UTC(+part.year, +part.month - 1, +part.day, +part.hour, +part.minute, +part.second);
  }

  function describeAge(ms) {
    const seconds = Math.max(0, Math.round(ms / 1000));
    if (seconds < 90) return `${seconds} s`;
    const minutes = Math.round(seconds / 60);
    if (minutes < 90) return `${minutes} min`;
    if (minutes < 48 * 60) return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
    return `${Math.round(minutes / 1440)} days`;
  }

  const when = (iso, now) => `${dayAndTime.format(new Date(iso))} (${describeAge(new Date(now) - new Date(iso))} ago)`;

  // ---- Charts ----------------------------------------------------------------------------
  const CONFIG = {
    font: "system-ui, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif",
    axis: { labelFontSize: 14, titleFontSize: 14, titleFontWeight: 600, labelColor: "#1a1a1a", titleColor: "#1a1a1a", gridColor: "#e3e3e3" },
    legend: { labelFontSize: 14, titleFontSize: 14, symbolSize: 160, orient: "bottom", direction: "horizontal", columns: 3, labelLimit: 320 },
    view: { stroke: null },
  };
  // The wall clock's instants are put on a UTC scale (see londonWall), so UTC time units.
  const TIME_UNITS = { minute: "utcyearmonthdatehoursminutes", hour: "utcyearmonthdatehoursminutes", day: "utcyearmonthdate" };
  const AXIS_FORMATS = { minute: "%H:%M", hour: "%H:%M", day: "%a %d %b" };
  const TOOLTIP_FORMATS = { minute: "%d %b %H:%M", hour: "%d %b %H:%M", day: "%a %d %b %Y" };

  function spec(values, extra) {
    return {
      $schema: "https://vega.github.io/schema/vega-lite/v6.json",
      data: { name: "rows", values },
      width: "container",
      autosize: { type: "fit-x", contains: "padding" },
      config: CONFIG,
      ...extra,
    };
  }

  function timeAxis(bucket, title) {
    return { field: "at", type: "temporal", timeUnit: TIME_UNITS[bucket], title, scale: { type: "utc" }, axis: { format: AXIS_FORMATS[bucket], labelOverlap: true } };
  }

  const timeTooltip = (bucket, title) => ({ field: "at", type: "temporal", timeUnit: TIME_UNITS[bucket], title, format: TOOLTIP_FORMATS[bucket] });

  /* One line per series, told apart by colour, point shape and dash. */
  function lines(values, { field, domain, y, bucket, tooltip, columns = 3 }) {
    const scale = (range) => ({ domain, range: domain.map((_, i) => range[i % range.length]) });
    const series = { field, type: "nominal", title: null };
    return spec(values, {
      height: 280,
      encoding: {
        x: timeAxis(bucket, null),
        y,
        color: { ...series, scale: scale(COLOURS), legend: { columns } },
        tooltip: [{ field, title: "Series" }, timeTooltip(bucket, "From"), ...tooltip],
      },
      layer: [
        // A bucket without a value (no message at an exhibition) breaks its line, unbridged.
        { mark: { type: "line", strokeWidth: 2.5, invalid: "break-paths-filter-domains" }, encoding: { strokeDash: { ...series, scale: scale(DASHES) } } },
        { mark: { type: "point", filled: true, size: 60 }, encoding: { shape: { ...series, scale: scale(SHAPES) } } },
      ],
    });
  }

  /* The body's parts, made once and kept across refreshes: a chart's view stays where it was
   * drawn and only its data changes. */
  function slots(card, names) {
    const body = card.querySelector(".body");
    const found = {};
    for (const name of names) {
      found[name] = body.querySelector(`:scope > .${name}`) || body.appendChild(el("div", name));
    }
    return found;
  }

  async function draw(holder, name, key, chartSpec) {
    const existing = views.get(name);
    if (existing && existing.key === key && holder.contains(existing.target)) {
      existing.view.change("rows", vega.changeset().remove(() => true).insert(chartSpec.data.values));
      await existing.view.runAsync();
      return;
    }
    existing?.view.finalize();
    const target = el("div", "chart");
    holder.replaceChildren(target);
    const view = vegaView(chartSpec, target);
    views.set(name, { key, view, target });
    await view.runAsync();
  }

  // ---- Sections --------------------------------------------------------------------------
  const SECTIONS = {
    async pipeline(card, body) {
      const state = STATES[body.state];
      const badge = el("p", "badge", el("span", "symbol", state.symbol), ` ${state.label}`);
      badge.dataset.pipelineState = body.state;
      const lag = body.lag === null ? "unknown (no watermark stored yet)" : `${number.format(body.lag)} messages at the last batches`;
      const facts = el(
        "dl",
        "facts",
        el("dt", null, "Last batch"),
        el("dd", null, body.last_batch_at ? when(body.last_batch_at, body.now) : "never"),
        el("dt", null, "Per second, last hour"),
        el("dd", null, `${rate.format(body.hour_per_second)} (${number.format(body.hour_messages)} messages)`),
        el("dt", null, "This minute so far"),
        el("dd", null, `${number.format(body.current_minute_messages)} messages`),
        el("dt", null, "Behind the topic"),
        el("dd", null, lag),
        el("dt", null, "Sessions"),
        el("dd", null, number.format(body.sessions)),
      );
      const partitions = table(
        "partitions",
        [["Topic"], ["Partition", "num"], ["Next offset", "num"], ["High watermark", "num"], ["Lag", "num"], ["Last batch"]],
        body.partitions.map((p) =>
          el(
            "tr",
            p.lag > 0 ? "lagging" : null,
            cell(null, p.kafka_topic),
            cell("num", String(p.kafka_partition)),
            cell("num", number.format(p.next_offset)),
            cell("num", p.high_watermark === null ? "—" : number.format(p.high_watermark)),
            cell("num", p.lag === null ? "—" : number.format(p.lag)),
            cell(null, when(p.stored_at, body.now)),
          ),
        ),
      );
      const slot = slots(card, ["summary", "load", "partitions"]);
      slot.summary.replaceChildren(badge, el("p", "reason", `${body.state_reason}.`), facts);
      slot.partitions.replaceChildren(body.partitions.length ? partitions : el("p", "note", "No partition has been stored yet."));
      const values = body.minutes.map((m) => ({ ...m, at: londonWall(m.minute) }));
      await draw(
        slot.load,
        "load",
        "load",
        spec(values, {
          height: 180,
          title: { text: "Messages stored per second, minute by minute · dashed line: the hour's average", anchor: "start", fontSize: 14, fontWeight: 600 },
          encoding: { x: timeAxis("minute", "Minute (London)") },
          layer: [
            {
              mark: { type: "bar", color: "#0072B2" },
              encoding: {
                y: { field: "per_second", type: "quantitative", title: "Messages per second" },
                tooltip: [timeTooltip("minute", "Minute"), { field: "messages", title: "Messages", format: "," }, { field: "per_second", title: "Per second", format: ".2f" }],
              },
            },
            // The hour's average: the mean of its 60 minutes is its messages over 3,600 s.
            { mark: { type: "rule", strokeDash: [6, 4], strokeWidth: 2, color: "#1a1a1a" }, encoding: { x: null, y: { aggregate: "mean", field: "per_second", type: "quantitative" } } },
          ],
        }),
      );
      showPipelineBanner(body);
      showClocks(body);
      return ["ready", ""];
    },

    async rejected(card, body) {
      if (body.rejected === 0) return ["empty", `No message was rejected in ${WINDOW_LABELS[body.window]}.`];
      const domain = body.reasons.map((r) => r.reason_code);
      const values = body.rows.map((row) => ({ ...row, at: londonWall(row.bucket) }));
      const totals = table(
        "totals",
        [["Reason code"], ["Rejected", "num"]],
        body.reasons.map((r) => el("tr", null, cell("code", r.reason_code), cell("num", number.format(r.rejected)))),
      );
      const slot = slots(card, ["over-time", "totals"]);
      slot.totals.replaceChildren(el("p", "total", `${number.format(body.rejected)} rejected in ${WINDOW_LABELS[body.window]}`), totals);
      const y = { field: "rejected", type: "quantitative", title: `Rejected per ${body.bucket}`, axis: { tickMinStep: 1 } };
      await draw(slot["over-time"], "rejected", `rejected/${body.bucket}/${domain.join(",")}`, lines(values, { field: "reason_code", domain, y, bucket: body.bucket, tooltip: [{ field: "rejected", title: "Rejected", format: "," }] }));
      return ["ready", ""];
    },

    async exhibitions(card, body) {
      const active = body.exhibitions.some((e) => e.rejected + e.stored > 0);
      const quiet = body.exhibitions.filter((e) => e.quiet);
      if (!active && body.unattributed === 0 && !quiet.length) return ["empty", `Nothing was stored or rejected in ${WINDOW_LABELS[body.window]}.`];
      const label = (e) => `${e.public_id} ${e.exhibition_name}`;
      const domain = body.exhibitions.map(label);
      const values = body.rows.map((row) => ({ ...row, series: label(row), at: londonWall(row.bucket) }));
      // Quiet kiosks first, then by reject rate.
      const ranked = [...body.exhibitions].sort((a, b) => b.quiet - a.quiet || (b.reject_rate ?? -1) - (a.reject_rate ?? -1) || a.public_id.localeCompare(b.public_id));
      const rows = ranked.map((e) => {
        const bar = el("span", "bar", el("span"));
        bar.firstChild.style.width = `${(e.reject_rate ?? 0) * 100}%`;
        // The mark is a word and a symbol; the row's colour only repeats it.
        const mark = e.quiet ? el("strong", "quiet-mark", "◆ Quiet") : null;
        const last = cell("last", mark, el("span", null, e.last_stored_at ? when(e.last_stored_at, body.now) : "never"));
        return el(
          "tr",
          e.quiet ? "quiet" : null,
          cell(null, el("strong", null, e.public_id), ` ${e.exhibition_name}`),
          cell("num", number.format(e.rejected)),
          cell("num", number.format(e.stored)),
          cell("rate", el("span", "avg", el("strong", null, e.reject_rate === null ? "—" : percent.format(e.reject_rate)), bar)),
          last,
        );
      });
      const totals = table("rates", [["Exhibition"], ["Rejected", "num"], ["Stored", "num"], ["Reject rate"], ["Last stored"]], rows);
      const unattributed = el("p", "note", `${number.format(body.unattributed)} rejected messages named no known exhibition.`);
      const quietNote = quiet.length
        ? el("p", "quiet-note", `Quiet: ${quiet.map((e) => e.public_id).join(", ")}. No rating or request stored for ${body.quiet_minutes} minutes or more while the museum is open: the kiosk sends nothing, or only what is rejected.`)
        : null;
      const slot = slots(card, ["over-time", "totals"]);
      slot.totals.replaceChildren(...[quietNote, totals, unattributed].filter(Boolean));
      const y = { field: "reject_rate", type: "quantitative", title: "Reject rate", scale: { domain: [0, 1] }, axis: { format: ".0%" } };
      const tooltip = [{ field: "rejected", title: "Rejected", format: "," }, { field: "stored", title: "Stored", format: "," }, { field: "reject_rate", title: "Reject rate", format: ".1%" }];
      await draw(slot["over-time"], "exhibitions", `exhibitions/${body.bucket}/${domain.join(",")}`, lines(values, { field: "series", domain, y, bucket: body.bucket, tooltip, columns: 2 }));
      return ["ready", ""];
    },

    async latest(card, body) {
      if (!body.messages.length) return ["empty", "No rejected message is stored yet."];
      const rows = body.messages.map((m) => {
        const raw = m.raw_shown === null ? el("p", "raw missing", "no value: the Kafka record had none") : el("pre", "raw", m.raw_shown);
        const size = m.raw_bytes === null ? null : el("p", "size", m.raw_truncated ? `the first ${number.format([...m.raw_shown].length)} characters of ${number.format(m.raw_bytes)} bytes` : `${number.format(m.raw_bytes)} bytes`);
        const sent = m.kafka_timestamp ? el("span", "muted", `sent ${dayAndTime.format(new Date(m.kafka_timestamp))}`) : null;
        return el(
          "tr",
          null,
          cell("when", dayAndTime.format(new Date(m.received_at))),
          cell("why", el("strong", "code", m.reason_code), el("span", "reason", m.reason)),
          cell(null, m.named_exhibition ?? "—"),
          cell("where", el("span", "code", `${m.kafka_topic}[${m.kafka_partition}]@${m.kafka_offset}`), sent),
          cell("raw-cell", raw, size),
        );
      });
      card.querySelector(".body").replaceChildren(table("latest", [["Received"], ["Reason"], ["Site"], ["Kafka"], ["Raw value"]], rows));
      return ["ready", ""];
    },
  };

  const ENDPOINTS = {
    pipeline: () => "/api/feed/pipeline",
    rejected: () => `/api/feed/rejected?${windowQuery()}`,
    exhibitions: () => `/api/feed/exhibitions?${windowQuery()}`,
    latest: () => "/api/feed/latest",
  };

  function windowQuery() {
    const query = new URLSearchParams();
    for (const value of params().getAll("window")) query.append("window", value);
    return query;
  }

  function setState(card, state, message) {
    card.dataset.state = state;
    card.setAttribute("aria-busy", state === "loading" ? "true" : "false");
    card.querySelector(".state").textContent = message || "";
  }

  async function loadSection(card, thisCycle, fresh) {
    const name = card.dataset.section;
    const title = card.querySelector("h2").textContent;
    if (fresh || !card.dataset.state) setState(card, "loading", `Loading ${title.toLowerCase()}…`);
    try {
      const body = await getJson(ENDPOINTS[name]());
      if (thisCycle !== cycle) return true;
      databaseNow = body.now;
      for (const element of card.querySelectorAll("[data-bucket]")) element.textContent = body.bucket;
      const [state, message] = await SECTIONS[name](card, body);
      if (state === "empty") {
        views.get(name)?.view.finalize();
        views.delete(name);
        card.querySelector(".body").replaceChildren();
      }
      setState(card, state, message);
      return true;
    } catch (error) {
      if (thisCycle !== cycle) return true;
      const shown = card.querySelector(".body").childElementCount ? " Below: the last data that loaded." : "";
      setState(card, "error", `Could not load this section: ${error.message}. Retrying in ${refreshSeconds() || 30} s.${shown}`);
      console.warn(`section ${name}: ${error.message}`);
      return false;
    }
  }

  // ---- Page-wide messages ----------------------------------------------------------------
  function showBanner(kind, text) {
    const banner = document.getElementById("banner");
    banner.hidden = !kind;
    if (kind) banner.dataset.kind = kind;
    banner.textContent = text || "";
  }

  function showPipelineBanner(body) {
    const last = body.last_batch_at ? ` It last stored a batch at ${when(body.last_batch_at, body.now)}.` : "";
    if (body.state === "stopped") showBanner("stale", `The pipeline is stopped: ${body.state_reason}.${last} Nothing new is stored until it runs again.`);
    else if (body.state === "behind") showBanner("stale", `The pipeline is behind: ${body.state_reason}.${last}`);
    else if (body.state === "stalled") showBanner("stale", `The pipeline has stalled: ${body.state_reason}. Nothing has been stored since ${when(body.stalled_since, body.now)}. Its /health answer and its log say why.`);
    else if (body.state === "never_run") showBanner("empty", "The pipeline has never stored a batch in this database. Start it (kafka_pipeline.py --follow) and this page fills in.");
    else showBanner(null, "");
  }

  function showClocks(body) {
    const note = document.getElementById("clocks");
    const apart = new Date(body.server_now) - new Date(body.now);
    note.hidden = Math.abs(apart) < CLOCKS_DIFFER_MS;
    note.textContent = note.hidden ? "" : `This server's clock says ${dayAndTime.format(new Date(body.server_now))}, ${describeAge(Math.abs(apart))} ${apart > 0 ? "ahead of" : "behind"} the database's: the times here are the database's.`;
  }

  function showStatus(ok) {
    const status = document.getElementById("status");
    const seconds = refreshSeconds();
    const every = describeRefresh(seconds);
    const updated = ok && databaseNow ? `Updated ${clock.format(new Date(databaseNow))}` : `Last attempt ${clock.format(new Date())}`;
    const strong = el("strong", null, updated);
    status.replaceChildren(strong, ` · ${every}`);
  }

  // ---- Controls and the refresh loop -------------------------------------------------------
  function buildControls() {
    const form = document.getElementById("controls");
    const windowSelect = form.elements.namedItem("window");
    windowSelect.value = windowName();
    const refresh = form.elements.namedItem("refresh");
    const choices = REFRESH_CHOICES.some(([s]) => s === refreshSeconds()) ? REFRESH_CHOICES : [[refreshSeconds(), `${refreshSeconds()} s`], ...REFRESH_CHOICES];
    refresh.replaceChildren(...choices.map(([value, text]) => {
      const option = el("option", null, text);
      option.value = String(value);
      option.selected = value === refreshSeconds();
      return option;
    }));
    form.onchange = (event) => {
      if (event.target.name === "window") {
        setParams({ window: event.target.value === DEFAULT_WINDOW ? null : event.target.value });
        reload(true);
      } else if (event.target.name === "refresh") {
        setParams({ refresh: Number(event.target.value) === (serverRefresh ?? 30) ? null : event.target.value });
        schedule();
        showStatus(true);
      }
    };
    form.onsubmit = (event) => event.preventDefault();
  }

  async function reload(fresh) {
    const thisCycle = ++cycle;
    clearTimeout(timer);
    if (serverRefresh === null) {
      try {
        serverRefresh = (await getJson("/api/meta")).refresh_seconds;
        buildControls();
      } catch (error) {
        serverRefresh = null; // asked again next time; the sections say what is wrong
      }
    }
    const results = await Promise.all([...document.querySelectorAll("[data-section]")].map((card) => loadSection(card, thisCycle, fresh)));
    if (thisCycle !== cycle) return;
    const ok = results.every(Boolean);
    if (!ok && results.every((result) => !result)) {
      showBanner("error", `Cannot load the data. Retrying every ${refreshSeconds() || 30} s; the sections show the last data that loaded.`);
    }
    showStatus(ok);
    document.body.dataset.loaded = String(thisCycle);
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    const seconds = refreshSeconds();
    if (seconds) timer = setTimeout(() => reload(false), seconds * 1000);
  }

  window.addEventListener("DOMContentLoaded", () => {
    buildControls();
    reload(true);
  });
})();
