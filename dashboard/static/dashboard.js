/* The live dashboards' page logic: filters in the URL, one JSON request per chart, Vega-Lite
 * charts updated in place, and distinct loading, empty, stale and error states. */
(() => {
  "use strict";

  const PAGE = document.body.dataset.page;
  // Okabe-Ito, a palette that colour-blind viewers can tell apart. Vermillion is kept for
  // emergencies only; emergencies are also marked with ⚠, a dashed line and triangles.
  const EMERGENCY = "#D55E00";
  const ASSISTANCE = "#0072B2";
  const EXHIBITION_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#999999", "#F0E442"];
  const EXHIBITION_SHAPES = ["circle", "square", "diamond", "cross", "triangle-down", "triangle-right", "circle", "square"];
  const KIND_COLOURS = { Ratings: "#0072B2", Requests: "#E69F00" };
  const FILTER_KEYS = ["from", "to", "days", "exhibition", "floor", "request", "hour_from", "hour_to"];
  const CHART_OPTIONS = { "requests-by-time-of-day": ["granularity"], "request-heatmap": ["heatmap"] };
  const PERIODS = [[1, "Today"], [7, "Last 7 days"], [30, "Last 30 days"], [90, "Last 90 days"], [365, "Last 12 months"], [730, "Last 2 years"]];
  const { REFRESH_CHOICES, getJson, describeRefresh, vegaView } = window.lmnh;
  const LONDON = "Europe/London";
  const clock = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const dayAndTime = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
  const longDay = new Intl.DateTimeFormat("en-GB", { timeZone: "UTC", day: "numeric", month: "short", year: "numeric" });
  const hourMinute = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, hour: "2-digit", minute: "2-digit" });
  const weekday = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, weekday: "short", day: "numeric", month: "short" });
  const londonDate = new Intl.DateTimeFormat("en-GB", { timeZone: LONDON, year: "numeric", month: "2-digit", day: "2-digit" });
  const number = new Intl.NumberFormat("en-GB");

  let meta = null;
  let timer = null;
  let cycle = 0;
  const views = new Map(); // chart name -> { key, view }

  // ---- The URL is the state --------------------------------------------------------------
  const params = () => new URLSearchParams(location.search);

  function setParams(update) {
    const next = params();
    for (const [key, value] of Object.entries(update)) {
      next.delete(key);
      for (const item of [].concat(value)) if (item !== "" && item != null) next.append(key, item);
    }
    history.replaceState(null, "", next.toString() ? `?${next}` : location.pathname);
    for (const link of document.querySelectorAll("a[data-nav]")) {
      link.search = next.toString() ? `?${next}` : "";
    }
    // Other parts of the page that follow the filters (the Safety page's Now panel) listen.
    document.dispatchEvent(new CustomEvent("filterschange", { detail: { search: location.search } }));
  }

  function chartQuery(name) {
    const current = params();
    const query = new URLSearchParams();
    for (const key of [...FILTER_KEYS, ...(CHART_OPTIONS[name] || [])]) {
      for (const value of current.getAll(key)) query.append(key, value);
    }
    return query;
  }

  const refreshSeconds = () => window.lmnh.refreshSeconds(meta?.refresh_seconds);

  // ---- Filters --------------------------------------------------------------------------
  function option(value, label, selected) {
    const element = document.createElement("option");
    element.value = String(value);
    element.textContent = label;
    element.selected = selected;
    return element;
  }

  function group(legendText) {
    const fieldset = document.createElement("fieldset");
    const legend = document.createElement("legend");
    legend.textContent = legendText;
    fieldset.append(legend);
    return fieldset;
  }

  function select(name, label, choices, current) {
    const element = document.createElement("select");
    element.name = name;
    element.setAttribute("aria-label", label);
    for (const [value, text] of choices) element.append(option(value, text, String(value) === String(current)));
    return element;
  }

  function chips(name, items, selected) {
    return items.map(([value, text]) => {
      const label = document.createElement("label");
      label.className = "chip";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = name;
      box.value = value;
      box.checked = selected.includes(value);
      label.append(box, document.createTextNode(text));
      return label;
    });
  }

  const hourLabel = (hour) => `${String(hour).padStart(2, "0")}:00`;

  function buildFilters() {
    const form = document.getElementById("filters");
    const current = params();
    form.replaceChildren();

    const period = group("Dates");
    const custom = current.has("from") || current.has("to");
    const days = current.get("days") || "30";
    const periodChoices = [...PERIODS.map(([value, text]) => [value, text]), ["custom", "Custom…"]];
    period.append(select("period", "Period", periodChoices, custom ? "custom" : days));
    const from = document.createElement("input");
    from.type = "date";
    from.name = "from";
    from.setAttribute("aria-label", "From (inclusive)");
    from.value = current.get("from") || "";
    const to = document.createElement("input");
    to.type = "date";
    to.name = "to";
    to.setAttribute("aria-label", "To (inclusive)");
    to.value = current.get("to") || "";
    from.hidden = to.hidden = !custom;
    period.append(from, to);
    form.append(period);

    const exhibitions = group("Exhibition");
    exhibitions.append(...chips("exhibition", meta.exhibitions.map((e) => [e.public_id, `${e.public_id} ${e.exhibition_name}`]), current.getAll("exhibition")));
    form.append(exhibitions);

    const floors = group("Floor");
    floors.append(...chips("floor", meta.floors.map((f) => [f, f === "Vault" ? "Vault" : `Floor ${f}`]), current.getAll("floor")));
    form.append(floors);

    const request = group("Request type");
    const requestChoices = [["", "Both"], ...meta.request_types.map((t) => [t.request_description.toLowerCase(), requestLabel(t)])];
    request.append(select("request", "Request type", requestChoices, current.get("request") || ""));
    form.append(request);

    const hours = group("Time of day");
    const hourChoices = Array.from({ length: 24 }, (_, h) => [h, hourLabel(h)]);
    hours.append(
      select("hour_from", "From hour", hourChoices, current.get("hour_from") || 0),
      document.createTextNode("to"),
      select("hour_to", "To hour (inclusive)", hourChoices.map(([h]) => [h, `${hourLabel(h).slice(0, 2)}:59`]), current.get("hour_to") || 23),
    );
    form.append(hours);

    const refresh = group("Refresh");
    refresh.append(select("refresh", "Refresh every", REFRESH_CHOICES, refreshSeconds()));
    form.append(refresh);

    const clear = document.createElement("button");
    clear.type = "button";
    clear.textContent = "Clear filters";
    clear.addEventListener("click", () => {
      history.replaceState(null, "", location.pathname);
      setParams({});
      buildFilters();
      syncChartOptions();
      reload(true);
    });
    form.append(clear);

    form.onchange = (event) => {
      const target = event.target;
      if (target.name === "period") {
        const isCustom = target.value === "custom";
        from.hidden = to.hidden = !isCustom;
        if (isCustom) {
          from.value = from.value || shiftDay(meta.today, -29);
          to.value = to.value || meta.today;
          setParams({ days: [], from: from.value, to: to.value });
        } else {
          setParams({ days: target.value === "30" ? [] : target.value, from: [], to: [] });
        }
      } else if (target.name === "exhibition" || target.name === "floor") {
        setParams({ [target.name]: [...form.querySelectorAll(`input[name="${target.name}"]:checked`)].map((box) => box.value) });
      } else if (target.name === "refresh") {
        setParams({ refresh: Number(target.value) === meta.refresh_seconds ? [] : target.value });
        schedule();
        return;
      } else if (target.name === "hour_from" || target.name === "hour_to") {
        setParams({ [target.name]: (target.name === "hour_from" ? target.value === "0" : target.value === "23") ? [] : target.value });
      } else {
        setParams({ [target.name]: target.value });
      }
      reload(true);
    };
    form.onsubmit = (event) => event.preventDefault();
  }

  function syncChartOptions() {
    for (const element of document.querySelectorAll("select[data-option]")) {
      const key = element.dataset.option;
      element.value = params().get(key) || element.options[0].value;
      element.onchange = () => {
        setParams({ [key]: element.value === element.options[0].value ? [] : element.value });
        reload(true);
      };
    }
  }

  function shiftDay(isoDay, days) {
    const day = new Date(`${isoDay}T00:00:00Z`);
    day.setUTCDate(day.getUTCDate() + days);
    return day.toISOString().slice(0, 10);
  }

  function describeFilters(filters) {
    const parts = [`${longDay.format(new Date(`${filters.from}T00:00:00Z`))} – ${longDay.format(new Date(`${filters.to}T00:00:00Z`))}`];
    if (filters.exhibition.length) parts.push(filters.exhibition.join(", "));
    if (filters.floor.length) parts.push(`floor ${filters.floor.join(", ")}`);
    if (filters.request) parts.push(filters.request.join(", "));
    if (filters.hour_from !== "0" || filters.hour_to !== "23") parts.push(`${hourLabel(filters.hour_from)}–${filters.hour_to.padStart(2, "0")}:59`);
    return parts.join(" · ");
  }

  // ---- Charts ---------------------------------------------------------------------------
  const requestLabel = (t) => (t.request_value === 1 ? `⚠ ${t.request_description}` : t.request_description);
  const requestDomain = () => meta.request_types.map(requestLabel);
  const requestRange = () => meta.request_types.map((t) => (t.request_value === 1 ? EMERGENCY : ASSISTANCE));
  const exhibitionLabel = (id, name) => `${id} ${name}`;
  const exhibitionDomain = () => meta.exhibitions.map((e) => exhibitionLabel(e.public_id, e.exhibition_name));

  const CONFIG = {
    font: "system-ui, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif",
    axis: { labelFontSize: 14, titleFontSize: 14, titleFontWeight: 600, labelColor: "#1a1a1a", titleColor: "#1a1a1a", gridColor: "#e3e3e3" },
    legend: { labelFontSize: 14, titleFontSize: 14, symbolSize: 160, orient: "bottom", direction: "horizontal", columns: 3, labelLimit: 320 },
    view: { stroke: null },
    text: { fontSize: 14 },
  };

  function base(rows, extra) {
    return {
      $schema: "https://vega.github.io/schema/vega-lite/v6.json",
      data: { name: "rows", values: rows },
      width: "container",
      autosize: { type: "fit-x", contains: "padding" },
      config: CONFIG,
      ...extra,
    };
  }

  const withRequestLabel = (rows) => rows.map((row) => ({ ...row, request_label: requestLabel(row) }));
  const requestColour = () => ({ field: "request_label", type: "nominal", title: null, scale: { domain: requestDomain(), range: requestRange() } });
  const barLabel = { calculate: "(datum.request_value == 1 ? '⚠ ' : '') + format(datum.requests, ',')", as: "label" };

  const SPECS = {
    "rating-over-time": (rows, payload) => {
      const values = rows.map((row) => ({ ...row, exhibition: exhibitionLabel(row.public_id, row.exhibition_name) }));
      const unit = { day: "utcyearmonthdate", week: "utcyearmonthdate", month: "utcyearmonth" }[payload.bucket];
      const format = payload.bucket === "month" ? "%b %Y" : "%d %b";
      const x = { field: "period", type: "temporal", timeUnit: unit, title: null, scale: { type: "utc" }, axis: { format, labelOverlap: true } };
      const colour = { field: "exhibition", type: "nominal", title: null, scale: { domain: exhibitionDomain(), range: EXHIBITION_COLOURS } };
      const shape = { field: "exhibition", type: "nominal", title: null, scale: { domain: exhibitionDomain(), range: EXHIBITION_SHAPES } };
      return {
        key: `rating-over-time/${payload.bucket}`,
        spec: base(values, {
          height: 300,
          encoding: {
            x,
            y: { field: "average_rating", type: "quantitative", title: "Average rating", scale: { domain: [0, 4], nice: false, zero: true }, axis: { values: [0, 1, 2, 3, 4] } },
            color: colour,
            tooltip: [
              { field: "exhibition", title: "Exhibition" },
              { field: "period", type: "temporal", timeUnit: unit, title: payload.bucket === "day" ? "Day" : `${payload.bucket[0].toUpperCase()}${payload.bucket.slice(1)} from`, format: "%d %b %Y" },
              { field: "average_rating", title: "Average", format: ".2f" },
              { field: "ratings", title: "Ratings", format: "," },
            ],
          },
          layer: [
            { mark: { type: "line", strokeWidth: 3, interpolate: "monotone" } },
            { mark: { type: "point", filled: true, size: 70 }, encoding: { shape } },
          ],
        }),
      };
    },
    popularity: (rows) => {
      const order = rows.map((row) => exhibitionLabel(row.public_id, row.exhibition_name));
      const values = rows.flatMap((row) => {
        const exhibition = exhibitionLabel(row.public_id, row.exhibition_name);
        return [
          { exhibition, kind: "Ratings", count: row.ratings, total: row.interactions, first: true },
          { exhibition, kind: "Requests", count: row.requests, total: row.interactions, first: false },
        ];
      });
      const y = { field: "exhibition", type: "nominal", title: null, sort: order, axis: { labelLimit: 300 } };
      return {
        key: "popularity",
        spec: base(values, {
          height: order.length * 42,
          padding: { right: 64 },
          encoding: { y },
          layer: [
            {
              mark: { type: "bar", cornerRadiusEnd: 2 },
              encoding: {
                x: { field: "count", type: "quantitative", stack: "zero", title: "Interactions", axis: { format: "~s", tickCount: 5, labelOverlap: true } },
                color: { field: "kind", type: "nominal", title: null, scale: { domain: Object.keys(KIND_COLOURS), range: Object.values(KIND_COLOURS) } },
                tooltip: [{ field: "exhibition", title: "Exhibition" }, { field: "kind", title: "Kind" }, { field: "count", title: "Count", format: "," }, { field: "total", title: "All interactions", format: "," }],
              },
            },
            {
              transform: [{ filter: "datum.first" }],
              mark: { type: "text", align: "left", dx: 6, fontWeight: 600 },
              encoding: { x: { field: "total", type: "quantitative" }, text: { field: "total", format: "," } },
            },
          ],
        }),
      };
    },
    "request-share": (rows) => {
      const values = withRequestLabel(rows).map((row) => ({ ...row, text: `${requestLabel(row)} ${(row.share * 100).toFixed(1)}% (${number.format(row.requests)})` }));
      const total = rows.reduce((sum, row) => sum + row.requests, 0);
      return {
        key: "request-share",
        spec: base(values, {
          height: 300,
          autosize: { type: "fit", contains: "padding" },
          layer: [
            {
              encoding: {
                theta: { field: "requests", type: "quantitative", stack: true },
                color: { ...requestColour(), legend: null },
                tooltip: [{ field: "request_label", title: "Type" }, { field: "requests", title: "Requests", format: "," }, { field: "share", title: "Share", format: ".1%" }],
              },
              layer: [
                { mark: { type: "arc", innerRadius: 62, outerRadius: 100, stroke: "#fff", strokeWidth: 2 } },
                { mark: { type: "text", radius: 126, fontSize: 16, fontWeight: 700 }, encoding: { text: { field: "text" } } },
              ],
            },
            { data: { values: [{ line: number.format(total) }] }, mark: { type: "text", dy: -8, fontSize: 24, fontWeight: 700 }, encoding: { text: { field: "line" } } },
            { data: { values: [{ line: "requests" }] }, mark: { type: "text", dy: 14, fontSize: 14 }, encoding: { text: { field: "line" } } },
          ],
        }),
      };
    },
    "requests-by-time-of-day": (rows, payload) => {
      const values = withRequestLabel(rows).map((row) => {
        const [h, m] = row.slot.split(":").map(Number);
        return { ...row, hour: h + m / 60 };
      });
      const byRequest = { field: "request_label", type: "nominal", title: null, scale: { domain: requestDomain() } };
      return {
        key: `time-of-day/${payload.filters.granularity}`,
        spec: base(values, {
          height: 280,
          encoding: {
            x: { field: "hour", type: "quantitative", title: "Time of day (London)", scale: { zero: false, nice: false }, axis: { tickMinStep: 1, labelExpr: "(datum.value < 10 ? '0' : '') + floor(datum.value) + ':' + (datum.value % 1 ? '30' : '00')" } },
            y: { field: "requests", type: "quantitative", title: payload.filters.granularity === "quarter" ? "Requests per quarter hour" : "Requests per hour" },
            color: requestColour(),
            tooltip: [{ field: "slot", title: "From" }, { field: "request_label", title: "Type" }, { field: "requests", title: "Requests", format: "," }],
          },
          layer: [
            { mark: { type: "line", strokeWidth: 3 }, encoding: { strokeDash: { ...byRequest, scale: { domain: requestDomain(), range: [[1, 0], [8, 4]] } } } },
            { mark: { type: "point", filled: true, size: 80 }, encoding: { shape: { ...byRequest, scale: { domain: requestDomain(), range: ["circle", "triangle-up"] } } } },
          ],
        }),
      };
    },
    "requests-by-floor": (rows) => groupedBars(withRequestLabel(rows).map((row) => ({ ...row, place: row.floor_name === "Vault" ? "Vault" : `Floor ${row.floor_name}` })), "requests-by-floor"),
    "requests-by-exhibition": (rows) => groupedBars(withRequestLabel(rows).map((row) => ({ ...row, place: exhibitionLabel(row.public_id, row.exhibition_name) })), "requests-by-exhibition"),
    "request-heatmap": (rows, payload) => {
      const values = rows.map((row) => ({ ...row, hour: hourLabel(row.hour_of_day), place: payload.filters.heatmap === "floor" ? (row.place === "Vault" ? "Vault" : `Floor ${row.place}`) : row.place }));
      const places = [...new Set(values.map((row) => row.place))];
      return {
        key: `heatmap/${payload.filters.heatmap}`,
        spec: base(values, {
          height: places.length * 44,
          transform: [{ joinaggregate: [{ op: "max", field: "requests", as: "most" }] }],
          encoding: {
            x: { field: "hour", type: "ordinal", title: "Hour of the day (London)", axis: { labelAngle: 0 } },
            y: { field: "place", type: "nominal", title: null, sort: places, axis: { labelLimit: 300 } },
          },
          layer: [
            {
              mark: { type: "rect", stroke: "#fff", strokeWidth: 2 },
              encoding: {
                color: { field: "requests", type: "quantitative", title: "Requests", scale: { scheme: "blues", zero: true }, legend: { orient: "right", direction: "vertical", gradientLength: 160 } },
                tooltip: [{ field: "place", title: "Where" }, { field: "hour", title: "Hour from" }, { field: "requests", title: "Requests", format: "," }],
              },
            },
            {
              mark: { type: "text", fontSize: 14, fontWeight: 600 },
              encoding: {
                text: { field: "requests", format: "," },
                color: { condition: { test: "datum.requests > datum.most * 0.55", value: "#ffffff" }, value: "#1a1a1a" },
              },
            },
          ],
        }),
      };
    },
  };

  function groupedBars(values, key) {
    const places = [...new Set(values.map((row) => row.place))];
    return {
      key,
      spec: base(values, {
        height: places.length * (requestDomain().length * 24 + 14),
        padding: { right: 56 },
        transform: [barLabel],
        encoding: {
          y: { field: "place", type: "nominal", title: null, sort: places, axis: { labelLimit: 300 } },
          yOffset: { field: "request_label", type: "nominal", scale: { domain: requestDomain() } },
          tooltip: [{ field: "place", title: "Where" }, { field: "request_label", title: "Type" }, { field: "requests", title: "Requests", format: "," }],
        },
        layer: [
          { mark: { type: "bar", cornerRadiusEnd: 2 }, encoding: { x: { field: "requests", type: "quantitative", title: "Requests", axis: { format: "~s", tickCount: 6, labelOverlap: true } }, color: requestColour() } },
          { mark: { type: "text", align: "left", dx: 5, fontWeight: 600 }, encoding: { x: { field: "requests", type: "quantitative" }, text: { field: "label" } } },
        ],
      }),
    };
  }

  function topRatedTable(rows) {
    const table = document.createElement("table");
    table.className = "ranked";
    const ratingNames = meta.ratings.map((r) => `${r.rating_value} ${r.rating_description}`);
    table.innerHTML = "<thead><tr><th>#</th><th>Exhibition</th><th>Floor</th><th class='num'>Ratings</th><th>Average (0–4)</th><th>Distribution 0–4</th></tr></thead>";
    const body = document.createElement("tbody");
    for (const row of rows) {
      const tr = document.createElement("tr");
      const most = Math.max(...row.distribution, 1);
      const title = row.distribution.map((n, i) => `${ratingNames[i]}: ${number.format(n)} (${((100 * n) / row.ratings).toFixed(0)}%)`).join("\n");
      const histogram = row.distribution.map((n, i) => `<div class="col"><span></span><b>${i}</b></div>`).join("");
      tr.innerHTML = `<td class="rank">${row.rank}</td><td><strong>${escapeHtml(row.public_id)}</strong> ${escapeHtml(row.exhibition_name)}</td>
        <td>${escapeHtml(row.floor_name)}</td><td class="num">${number.format(row.ratings)}</td>
        <td><div class="avg"><strong>${row.average_rating.toFixed(2)}</strong><span class="bar"><span></span></span></div></td>
        <td><div class="histogram" title="${escapeHtml(title)}" aria-label="${escapeHtml(title.replaceAll("\n", "; "))}">${histogram}</div></td>`;
      // Sizes through the CSSOM: a style="" attribute in markup is inline style, which the
      // pages' Content-Security-Policy blocks (style-src 'self').
      tr.querySelector(".avg .bar > span").style.width = `${(row.average_rating / 4) * 100}%`;
      tr.querySelectorAll(".histogram .col > span").forEach((bar, i) => {
        bar.style.height = `${Math.max(1, Math.round((100 * row.distribution[i]) / most))}%`;
      });
      body.append(tr);
    }
    table.append(body);
    return table;
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  async function draw(card, name, payload) {
    const holder = card.querySelector(".body");
    if (name === "top-rated") {
      holder.replaceChildren(topRatedTable(payload.rows));
      return;
    }
    const { key, spec } = SPECS[name](payload.rows, payload);
    const existing = views.get(name);
    const values = spec.data.values;
    if (existing && existing.key === key && holder.firstElementChild) {
      existing.view.change("rows", vega.changeset().remove(() => true).insert(values));
      await existing.view.runAsync();
      return;
    }
    existing?.view.finalize();
    const target = document.createElement("div");
    holder.replaceChildren(target);
    const view = vegaView(spec, target);
    views.set(name, { key, view });
    await view.runAsync();
  }

  function setState(card, state, message) {
    card.dataset.state = state;
    card.setAttribute("aria-busy", state === "loading" ? "true" : "false");
    card.querySelector(".state").textContent = message || "";
  }

  async function loadChart(card, thisCycle, fresh) {
    const name = card.dataset.chart;
    const title = card.querySelector("h2").textContent;
    if (fresh || !card.dataset.state) setState(card, "loading", `Loading ${title.toLowerCase()}…`);
    try {
      const payload = await getJson(`/api/charts/${name}?${chartQuery(name)}`);
      if (thisCycle !== cycle) return;
      for (const element of card.querySelectorAll("[data-bucket]")) element.textContent = payload.bucket;
      const nothing = payload.rows.length === 0 || payload.rows.every((row) => (row.requests ?? row.interactions ?? row.ratings ?? 0) === 0);
      if (nothing) {
        views.get(name)?.view.finalize();
        views.delete(name);
        card.querySelector(".body").replaceChildren();
        setState(card, "empty", `No ${card.dataset.kind} match these filters (${describeFilters(payload.filters)}). Widen the dates or clear a filter.`);
        return;
      }
      await draw(card, name, payload);
      setState(card, "ready", "");
    } catch (error) {
      if (thisCycle !== cycle) return;
      const shown = card.querySelector(".body").childElementCount ? " The chart below shows the last data that loaded." : "";
      setState(card, "error", `Could not load this chart: ${error.message}. Retrying in ${refreshSeconds() || 30} s.${shown}`);
      console.warn(`chart ${name}: ${error.message}`);
    }
  }

  // ---- Freshness and the refresh loop ----------------------------------------------------
  function showFreshness(freshness, error) {
    const status = document.getElementById("status");
    const every = describeRefresh(refreshSeconds());
    if (error) {
      showBanner("error", `Cannot load the data: ${error.message}. Retrying every ${refreshSeconds() || 30} s; the charts show the last data that loaded.`);
      status.textContent = `Last attempt ${clock.format(new Date())} · ${every}`;
      return;
    }
    const latest = freshness.latest_interaction_at ? new Date(freshness.latest_interaction_at) : null;
    // The server's clock, not this screen's: a wall screen's clock may be wrong.
    const now = new Date(meta.now ?? freshness.queried_at);
    const museum = meta.museum;
    status.innerHTML = "";
    const strong = document.createElement("strong");
    strong.textContent = `Updated ${clock.format(now)}`;
    status.append(strong, document.createTextNode(` · latest interaction ${latest ? dayAndTime.format(latest) : "none yet"} · ${every}`));
    const ageMinutes = latest ? (now - latest) / 60000 : Infinity;
    if (!latest) {
      showBanner("empty", "No interactions are stored yet. Start the pipeline (kafka_pipeline.py --follow) and they will appear here.");
    } else if (museum && !museum.open) {
      // Outside opening hours the kiosks are quiet: that is normal, not stale.
      const opens = museum.opens_at ? ` until it opens at ${onDay(new Date(museum.opens_at), now)}` : "";
      showBanner("closed", `The museum is closed; kiosks are quiet${opens}. Latest interaction at ${onDay(latest, now)}.`);
    } else if (ageMinutes > meta.stale_minutes) {
      const loaded = freshness.last_loaded_at ? `; the pipeline last stored a batch at ${dayAndTime.format(new Date(freshness.last_loaded_at))}` : "";
      const why = museum?.closes_at
        ? `The museum is open until ${hourMinute.format(new Date(museum.closes_at))}: are the kiosks and the pipeline running?`
        : "The museum may be closed, or the pipeline stopped.";
      showBanner("stale", `Stale data: no new interaction for ${describeAge(ageMinutes)} (latest at ${dayAndTime.format(latest)})${loaded}. ${why}`);
    } else {
      showBanner(null, "");
    }
  }

  /** The banner is an alert, and screen readers speak every change to it: change it only when
   * what it says changes, not at every refresh. */
  function showBanner(kind, text) {
    const banner = document.getElementById("banner");
    banner.hidden = kind === null;
    if (kind === null) delete banner.dataset.kind;
    else banner.dataset.kind = kind;
    if (banner.textContent !== text) banner.textContent = text;
  }

  /** "08:45 today" or "08:45 on Mon 30 Nov", on the museum's clock. */
  function onDay(instant, now) {
    const day = londonDate.format(instant) === londonDate.format(now) ? "today" : `on ${weekday.format(instant)}`;
    return `${hourMinute.format(instant)} ${day}`;
  }

  function describeAge(minutes) {
    if (minutes < 90) return `${Math.round(minutes)} min`;
    if (minutes < 48 * 60) return `${Math.floor(minutes / 60)} h ${Math.round(minutes % 60)} min`;
    return `${Math.round(minutes / 1440)} days`;
  }

  async function reload(fresh) {
    const thisCycle = ++cycle;
    clearTimeout(timer);
    try {
      const latest = await getJson("/api/meta");
      if (thisCycle !== cycle) return;
      const first = meta === null;
      meta = latest;
      if (first) {
        buildFilters();
        syncChartOptions();
        setParams({});
      }
      showFreshness(meta.freshness, null);
      await Promise.all([...document.querySelectorAll("[data-chart]")].map((card) => loadChart(card, thisCycle, fresh)));
    } catch (error) {
      if (thisCycle !== cycle) return;
      showFreshness(null, error);
      for (const card of document.querySelectorAll("[data-chart]")) {
        if (card.dataset.state !== "ready") setState(card, "error", `Waiting for the data: ${error.message}.`);
      }
    }
    if (thisCycle === cycle) {
      document.body.dataset.loaded = String(thisCycle);
      schedule();
    }
  }

  function schedule() {
    clearTimeout(timer);
    const seconds = refreshSeconds() || (meta === null ? 30 : 0);
    if (seconds) timer = setTimeout(() => reload(false), seconds * 1000);
  }

  window.addEventListener("DOMContentLoaded", () => reload(true));
})();
