// The operators' live dashboard: GET /v1/stats/stream (Server-Sent Events) drawn as cards, a
// transactions-per-second sparkline, a map and a table. No libraries: this file is all of it.
(() => {
  "use strict";

  const TEXT = {
    fa: {
      title: "کالابرگ الکترونیکی — آمار زنده",
      tranche: "مرحله",
      all_tranches: "همه مرحله‌ها",
      logout: "خروج",
      login_title: "ورود اپراتور",
      token_prompt: "توکن اپراتور را وارد کنید",
      login: "ورود",
      bad_token: "توکن نامعتبر است.",
      transactions: "تراکنش",
      served: "خانوار بهره‌مند",
      eligible: "خانوار مشمول",
      coverage: "پوشش",
      amount: "مبلغ (ریال)",
      tps: "تراکنش در ثانیه",
      map: "نقشهٔ پوشش استان‌ها",
      top5: "پنج استان برتر",
      rank: "رتبه",
      province: "استان",
      as_of: "به‌روز تا",
      live: "زنده",
      connecting: "در حال اتصال…",
      down: "قطع",
      switch: "English",
    },
    en: {
      title: "Kalabarg electronic coupon — live counters",
      tranche: "Tranche",
      all_tranches: "All tranches",
      logout: "Sign out",
      login_title: "Operator sign-in",
      token_prompt: "Enter your operator token",
      login: "Sign in",
      bad_token: "The token is not valid.",
      transactions: "Transactions",
      served: "Served households",
      eligible: "Eligible households",
      coverage: "Coverage",
      amount: "Amount (rials)",
      tps: "Transactions per second",
      map: "Coverage by province",
      top5: "Top 5 provinces",
      rank: "Rank",
      province: "Province",
      as_of: "As of",
      live: "live",
      connecting: "connecting…",
      down: "disconnected",
      switch: "فارسی",
    },
  };
  const LOCALE = { fa: "fa-IR", en: "en-US" };
  const SAMPLES = 120; // two minutes of one-second samples
  // the five best-ranked provinces are marked, once they have served anyone
  const isTop = (p) => p.rank <= 5 && p.served_households > 0;
  const TOKEN_KEY = "kalabarg.token";
  const LANG_KEY = "kalabarg.lang";

  const state = {
    lang: localStorage.getItem(LANG_KEY) === "en" ? "en" : "fa",
    token: sessionStorage.getItem(TOKEN_KEY),
    tranche: "",
    latest: null, // the newest stats snapshot
    sampled: null, // the snapshot the previous sparkline sample was taken from
    rates: [],
    source: null,
    provinces: null, // code -> {lat, lng}
  };

  const $ = (id) => document.getElementById(id);
  const t = (key) => TEXT[state.lang][key];

  // -- formatting: Persian digits in Persian, the Solar Hijri calendar in Asia/Tehran ---------

  function formatNumber(value, lang = state.lang) {
    return new Intl.NumberFormat(LOCALE[lang]).format(value);
  }

  function formatPercent(value, lang = state.lang) {
    return new Intl.NumberFormat(LOCALE[lang], {
      style: "percent",
      minimumFractionDigits: 1,
      maximumFractionDigits: 1,
    }).format(value);
  }

  // The date and time of `date` in Tehran on the Solar Hijri calendar, in parts.
  function solarHijri(date, lang = state.lang) {
    const parts = {};
    const format = new Intl.DateTimeFormat(`${LOCALE[lang]}-u-ca-persian-nu-${lang === "fa" ? "arabext" : "latn"}`, {
      timeZone: "Asia/Tehran",
      weekday: "long",
      year: "numeric",
      month: "long",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      hourCycle: "h23",
    });
    for (const part of format.formatToParts(date)) parts[part.type] = part.value;
    const year = parts.year.replace(/\s*(AP|ه\.ش\.)$/u, "");
    return {
      weekday: parts.weekday,
      day: parts.day,
      month: parts.month,
      year,
      time: `${parts.hour}:${parts.minute}:${parts.second}`,
      date:
        lang === "fa"
          ? `${parts.weekday} ${parts.day} ${parts.month} ${year}`
          : `${parts.weekday}, ${parts.day} ${parts.month} ${year}`,
    };
  }

  // -- the page's language -------------------------------------------------------------------

  function applyLanguage() {
    const root = document.documentElement;
    root.lang = state.lang;
    root.dir = state.lang === "fa" ? "rtl" : "ltr";
    document.title = t("title");
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    $("lang").textContent = t("switch");
    $("lang").lang = state.lang === "fa" ? "en" : "fa";
    setStatus($("status").dataset.state);
    tick();
    if (state.latest) render(state.latest);
    drawSpark();
  }

  function setStatus(name) {
    const el = $("status");
    el.dataset.state = name;
    el.textContent = name === "idle" ? "" : t(name);
  }

  // -- sign-in -------------------------------------------------------------------------------

  function showLogin(message) {
    if (state.source) state.source.close();
    state.source = null;
    $("board").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setStatus("idle");
    $("token").focus();
  }

  function signOut(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  async function signIn(token) {
    // one plain request tells a bad token (401) from a good one before streaming
    const resp = await fetch("/v1/stats", { headers: { Authorization: `Bearer ${token}` } });
    if (resp.status === 401 || resp.status === 403) {
      signOut(t("bad_token"));
      return;
    }
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    $("board").hidden = false;
    $("logout").hidden = false;
    render(await resp.json());
    await loadTranches();
    connect();
  }

  // Operators can list tranches; anyone else watches all of them.
  async function loadTranches() {
    const select = $("tranche");
    for (const option of [...select.options]) if (option.value !== "") option.remove();
    const resp = await fetch("/v1/admin/tranches", {
      headers: { Authorization: `Bearer ${state.token}` },
    });
    if (!resp.ok) {
      state.tranche = "";
      select.value = "";
      return;
    }
    for (const tranche of (await resp.json()).tranches) {
      const option = document.createElement("option");
      option.value = String(tranche.id);
      option.textContent = `${tranche.name} (${tranche.id})`;
      select.append(option);
    }
    select.value = state.tranche;
  }

  // -- the stream ----------------------------------------------------------------------------

  function connect() {
    if (state.source) state.source.close();
    const params = new URLSearchParams({ access_token: state.token });
    if (state.tranche) params.set("tranche_id", state.tranche);
    const source = new EventSource(`/v1/stats/stream?${params}`);
    state.source = source;
    setStatus("connecting");
    source.addEventListener("open", () => setStatus("live"));
    source.addEventListener("stats", (event) => {
      setStatus("live");
      render(JSON.parse(event.data));
    });
    source.addEventListener("error", async () => {
      // EventSource retries by itself; a token revoked meanwhile would retry forever
      setStatus(source.readyState === EventSource.CLOSED ? "down" : "connecting");
      const resp = await fetch("/v1/stats", {
        headers: { Authorization: `Bearer ${state.token}` },
      }).catch(() => null);
      if (resp && (resp.status === 401 || resp.status === 403)) signOut(t("bad_token"));
      else if (source.readyState === EventSource.CLOSED && state.source === source) {
        setTimeout(() => state.source === source && connect(), 2000);
      }
    });
  }

  // -- drawing -------------------------------------------------------------------------------

  function provinceName(p) {
    return state.lang === "fa" ? p.name_fa : p.name_en;
  }

  function render(stats) {
    if (state.latest && stats.tranche_id !== state.latest.tranche_id) {
      state.rates = [];
      state.sampled = null;
    }
    state.latest = stats;
    const totals = stats.totals;
    $("total-transactions").textContent = formatNumber(totals.transactions);
    $("total-served").textContent = formatNumber(totals.served_households);
    $("total-eligible").textContent = formatNumber(totals.eligible_households);
    $("total-coverage").textContent = formatPercent(totals.coverage);
    $("total-amount").textContent = formatNumber(totals.amount);
    $("as-of").textContent = solarHijri(new Date(stats.as_of)).time;

    const rows = [...stats.provinces].sort((a, b) => a.rank - b.rank);
    const body = document.querySelector("#provinces tbody");
    body.replaceChildren(
      ...rows.map((p) => {
        const tr = document.createElement("tr");
        tr.dataset.code = p.code;
        tr.className = isTop(p) ? "top" : "";
        const cells = [
          ["rank", formatNumber(p.rank)],
          ["name", provinceName(p)],
          ["transactions num", formatNumber(p.transactions)],
          ["served num", formatNumber(p.served_households)],
          ["eligible num", formatNumber(p.eligible_households)],
          ["coverage num", formatPercent(p.coverage)],
        ];
        for (const [cls, text] of cells) {
          const td = document.createElement("td");
          td.className = cls;
          td.textContent = text;
          tr.append(td);
        }
        return tr;
      }),
    );
    drawMap(stats);
  }

  // Provinces as circles at their iso3166-2 positions, sized by coverage; the top 5 in gold.
  function drawMap(stats) {
    if (!state.provinces) return;
    const svg = $("map");
    const coords = Object.values(state.provinces);
    const lats = coords.map((c) => c.lat);
    const lngs = coords.map((c) => c.lng);
    const squeeze = Math.cos(((Math.min(...lats) + Math.max(...lats)) / 2) * (Math.PI / 180));
    const x = (lng) => (lng - Math.min(...lngs)) * squeeze + 1;
    const y = (lat) => Math.max(...lats) - lat + 1;
    const width = (Math.max(...lngs) - Math.min(...lngs)) * squeeze + 2;
    const height = Math.max(...lats) - Math.min(...lats) + 2;
    svg.setAttribute("viewBox", `0 0 ${width.toFixed(2)} ${height.toFixed(2)}`);
    const ns = "http://www.w3.org/2000/svg";
    const shapes = [];
    for (const p of [...stats.provinces].sort((a, b) => b.rank - a.rank)) {
      const at = state.provinces[p.code];
      if (!at) continue;
      const circle = document.createElementNS(ns, "circle");
      circle.setAttribute("cx", x(at.lng).toFixed(3));
      circle.setAttribute("cy", y(at.lat).toFixed(3));
      circle.setAttribute("r", (0.18 + 0.7 * Math.sqrt(p.coverage)).toFixed(3));
      circle.dataset.code = p.code;
      if (isTop(p)) circle.classList.add("top");
      const title = document.createElementNS(ns, "title");
      title.textContent = `${provinceName(p)} — ${t("coverage")} ${formatPercent(p.coverage)}, ${t("rank")} ${formatNumber(p.rank)}`;
      circle.append(title);
      shapes.push(circle);
      if (isTop(p)) {
        const label = document.createElementNS(ns, "text");
        label.setAttribute("x", x(at.lng).toFixed(3));
        label.setAttribute("y", (y(at.lat) + 0.11).toFixed(3));
        label.textContent = formatNumber(p.rank);
        shapes.push(label);
      }
    }
    svg.replaceChildren(...shapes);
  }

  // One sample a second: net transactions per second between the snapshots seen.
  function sample() {
    const now = state.latest;
    if (!now) return;
    let rate = 0;
    const before = state.sampled;
    if (before && now !== before && now.tranche_id === before.tranche_id) {
      const seconds = (Date.parse(now.as_of) - Date.parse(before.as_of)) / 1000;
      if (seconds > 0) rate = (now.totals.transactions - before.totals.transactions) / seconds;
    }
    state.sampled = now;
    state.rates.push(Math.max(rate, 0));
    if (state.rates.length > SAMPLES) state.rates.shift();
    drawSpark();
  }

  function drawSpark() {
    const rates = state.rates;
    const top = Math.max(1, ...rates);
    const points = rates.map((r, i) => {
      const px = (300 * (SAMPLES - rates.length + i)) / (SAMPLES - 1);
      return `${px.toFixed(1)},${(58 - (56 * r) / top).toFixed(1)}`;
    });
    $("spark-line").setAttribute("points", points.join(" "));
    $("tps-now").textContent = rates.length ? formatNumber(Math.round(rates[rates.length - 1] * 10) / 10) : "—";
    $("spark").setAttribute("aria-label", t("tps"));
  }

  function tick() {
    const now = solarHijri(new Date());
    $("clock-date").textContent = now.date;
    $("clock-time").textContent = now.time;
  }

  // -- start ---------------------------------------------------------------------------------

  async function loadProvinces() {
    const resp = await fetch("/dashboard/provinces.json");
    state.provinces = {};
    for (const p of await resp.json()) state.provinces[p.code] = p;
    if (state.latest) drawMap(state.latest);
  }

  function start() {
    $("lang").addEventListener("click", () => {
      state.lang = state.lang === "fa" ? "en" : "fa";
      localStorage.setItem(LANG_KEY, state.lang);
      applyLanguage();
    });
    $("logout").addEventListener("click", () => signOut());
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      signIn($("token").value.trim());
    });
    $("tranche").addEventListener("change", (event) => {
      state.tranche = event.target.value;
      state.rates = [];
      state.sampled = null;
      connect();
    });
    applyLanguage();
    loadProvinces();
    setInterval(tick, 1000);
    setInterval(sample, 1000);
    if (state.token) signIn(state.token);
    else showLogin();
  }

  // for the browser tests: the formatting the page uses
  window.kalabarg = { solarHijri, formatNumber, formatPercent };
  start();
})();
