/* What the pages' scripts share: reading the server's JSON answers, and the page's refresh
 * setting (the URL's refresh=N, else the server's --refresh-seconds). */
(() => {
  "use strict";

  const REFRESH_CHOICES = [[10, "10 s"], [30, "30 s"], [60, "1 min"], [300, "5 min"], [0, "off"]];

  /* The JSON body of a good answer; for a bad one, an Error with the server's own `error`. */
  async function getJson(path) {
    let response;
    try {
      response = await fetch(path, { cache: "no-store" });
    } catch (error) {
      throw new Error("the dashboard server is not answering");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (response.status === 401) signIn();
    if (!response.ok) throw new Error(body?.error || `the server answered ${response.status}`);
    return body;
  }

  /* The session has ended (signed out elsewhere, expired, account disabled): to the sign-in
   * page, and back here after it. */
  function signIn() {
    if (signingOut) return; // the sign-out goes to the sign-in page itself
    location.assign(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  let signingOut = false;

  /* Who is signed in, once per page: their name and a sign-out button in the header, and the
   * links to pages their roles do not open hidden. Resolves to /api/me's answer (its
   * csrf_token goes with every POST). */
  const staff = getJson("/api/me").then((me) => {
    const NAV_ROLE = { "/exhibitions": "exhibitions", "/safety": "security", "/feed": "operations" };
    for (const link of document.querySelectorAll("nav a[data-nav]")) {
      const role = NAV_ROLE[link.getAttribute("href")];
      if (role && !me.roles.includes(role)) link.hidden = true;
    }
    const holder = document.getElementById("staff");
    if (holder) {
      const name = document.createElement("span");
      name.textContent = me.name;
      const out = document.createElement("button");
      out.type = "button";
      out.textContent = "Sign out";
      out.addEventListener("click", async () => {
        signingOut = true; // a refresh refused meanwhile must not race it to the sign-in page
        const answer = await fetch("/signout", { method: "POST", headers: { "X-CSRF-Token": me.csrf_token } });
        await answer.arrayBuffer(); // read to its end: leaving sooner would abort it
        location.assign("/signin");
      });
      holder.replaceChildren(name, out);
    }
    return me;
  });

  /* Seconds between reloads, 0 for off; `serverDefault` until the server has said (null). */
  function refreshSeconds(serverDefault) {
    const raw = new URLSearchParams(location.search).get("refresh");
    const value = raw === null ? serverDefault ?? 30 : Number(raw);
    return Number.isFinite(value) && value >= 0 ? value : 30;
  }

  /* "refreshes every 30 s", or "auto-refresh off". */
  function describeRefresh(seconds) {
    if (!seconds) return "auto-refresh off";
    return `refreshes every ${REFRESH_CHOICES.find(([s]) => s === seconds)?.[1] || `${seconds} s`}`;
  }

  /* A Vega-Lite spec as a Vega view (SVG) in Vega's CSP-safe mode: expressions are kept as
   * syntax trees and run by vega-interpreter, never compiled with `new Function`, which the
   * pages' Content-Security-Policy forbids (no 'unsafe-eval'). */
  function vegaView(spec, container) {
    const runtime = vega.parse(vegaLite.compile(spec).spec, null, { ast: true });
    return new vega.View(runtime, { renderer: "svg", container, hover: true, expr: vega.expressionInterpreter });
  }

  window.lmnh = Object.freeze({ REFRESH_CHOICES, getJson, refreshSeconds, describeRefresh, vegaView, staff, signIn });
})();
