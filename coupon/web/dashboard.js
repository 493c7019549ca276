// The operators' live dashboard: GET /v1/stats/stream (Server-Sent Events) drawn as "my
// province", cards, a map of the provinces, charts (uPlot, vendored) and a sortable table.
(() => {
  "use strict";

  const TEXT = {
    fa: {
      title: "کالابرگ الکترونیکی — آمار زنده",
      tranche: "مرحله",
      all_tranches: "همه مرحله‌ها",
      logout: "خروج",
      login_title: "ورود",
      token_prompt: "توکن اپراتور را وارد کنید",
      login: "ورود",
      bad_token: "توکن نامعتبر است.",
      transactions: "تراکنش",
      served: "خانوار بهره‌مند",
      eligible: "خانوار مشمول",
      coverage: "پوشش",
      amount: "مبلغ",
      rials: "ریال",
      declined: "ردشده",
      reversals: "برگشتی",
      reversed_amount: "مبلغ برگشتی",
      offline_posted: "ثبت‌شده پس از قطعی",
      offline_declined: "ردشدهٔ آفلاین (زیان فروشگاه)",
      today: "امروز",
      map: "پوشش استان‌ها",
      charts: "نمودارها",
      tpm_title: "تراکنش در دقیقه — دو ساعت اخیر",
      served_title: "خانوارهای بهره‌مند در طول مرحله",
      compare_title: "تراکنش‌های تجمعی: این مرحله و مرحلهٔ قبل",
      per_minute: "تراکنش در دقیقه",
      households: "خانوار",
      day_of_tranche: "روز مرحله",
      this_tranche: "این مرحله",
      previous_tranche: "مرحلهٔ قبل",
      time: "زمان",
      rank: "رتبه",
      province: "استان",
      table_title: "استان‌ها",
      export: "خروجی CSV",
      print: "چاپ",
      as_of: "به‌روز تا",
      live: "زنده",
      connecting: "در حال اتصال…",
      down: "قطع",
      stale_title: "اتصال قطع است؛ ارقام ممکن است کهنه باشند.",
      last_update: "آخرین به‌روزرسانی:",
      my_province: "استان من",
      pick_province: "استان خود را انتخاب کنید تا این‌جا سنجاق شود.",
      choose: "— انتخاب استان —",
      rank_of: (n, of) => `رتبهٔ ${n} از ${of}`,
      rank_up: (n, at) => `▲ ${n} پله بهتر از ساعت ${at}`,
      rank_down: (n, at) => `▼ ${n} پله پایین‌تر از ساعت ${at}`,
      rank_same: (at) => `بدون تغییر از ساعت ${at}`,
      today_figures: (tx, amount) => `${tx} تراکنش، ${amount}`,
      tap_hint: "برای دیدن ارقام یک استان روی آن بزنید.",
      declines_note: "ردشده‌ها بر اساس استان فروشگاه و برگشتی‌ها بر اساس استان خانوار شمرده می‌شوند.",
      credits: "مرز استان‌ها: Natural Earth (مالکیت عمومی). نمودارها: uPlot (مجوز MIT).",
      no_data: "هنوز داده‌ای نیست",
      switch: "English",
      reasons: {
        insufficient_balance: "اعتبار ناکافی",
        household_not_found: "خانوار ناشناخته",
        household_suspended: "خانوار تعلیق‌شده",
        not_eligible: "نامشمول",
        no_active_tranche: "بدون مرحلهٔ فعال",
        not_open_yet: "هنوز باز نشده",
        category_not_allowed: "کالای غیرمجاز",
        merchant_suspended: "فروشگاه تعلیق‌شده",
        terminal_suspended: "پایانه تعلیق‌شده",
        reversed: "برگشت‌خورده",
        offline_not_enabled: "پایانهٔ بدون مجوز آفلاین",
        captured_in_future: "زمان ثبت در آینده",
        late: "ارسال دیرهنگام",
        outside_window: "خارج از بازهٔ مرحله",
        offline_max_amount_exceeded: "بیش از سقف خرید آفلاین",
        offline_allowance_exceeded: "بیش از سهمیهٔ آفلاین",
      },
    },
    en: {
      title: "Kalabarg electronic coupon — live counters",
      tranche: "Tranche",
      all_tranches: "All tranches",
      logout: "Sign out",
      login_title: "Sign in",
      token_prompt: "Enter your operator token",
      login: "Sign in",
      bad_token: "The token is not valid.",
      transactions: "Transactions",
      served: "Served households",
      eligible: "Eligible households",
      coverage: "Coverage",
      amount: "Amount",
      rials: "rials",
      declined: "Declined",
      reversals: "Reversals",
      reversed_amount: "Reversed",
      offline_posted: "Posted from offline",
      offline_declined: "Declined offline (stores' loss)",
      today: "Today",
      map: "Coverage by province",
      charts: "Charts",
      tpm_title: "Transactions per minute — last two hours",
      served_title: "Served households over the tranche",
      compare_title: "Cumulative transactions: this tranche and the previous one",
      per_minute: "transactions / min",
      households: "households",
      day_of_tranche: "day of tranche",
      this_tranche: "This tranche",
      previous_tranche: "Previous tranche",
      time: "time",
      rank: "Rank",
      province: "Province",
      table_title: "Provinces",
      export: "Export CSV",
      print: "Print",
      as_of: "As of",
      live: "live",
      connecting: "connecting…",
      down: "disconnected",
      stale_title: "Connection lost: the figures may be out of date.",
      last_update: "Last update:",
      my_province: "My province",
      pick_province: "Pick your province to pin it here.",
      choose: "— choose a province —",
      rank_of: (n, of) => `rank ${n} of ${of}`,
      rank_up: (n, at) => `▲ up ${n} since ${at}`,
      rank_down: (n, at) => `▼ down ${n} since ${at}`,
      rank_same: (at) => `unchanged since ${at}`,
      today_figures: (tx, amount) => `${tx} transactions, ${amount}`,
      tap_hint: "Tap a province to see its figures.",
      declines_note: "Declines are counted by the store's province, reversals by the household's.",
      credits: "Province boundaries: Natural Earth (public domain). Charts: uPlot (MIT licence).",
      no_data: "no data yet",
      switch: "فارسی",
      reasons: {
        insufficient_balance: "insufficient balance",
        household_not_found: "unknown household",
        household_suspended: "household suspended",
        not_eligible: "not eligible",
        no_active_tranche: "no active tranche",
        not_open_yet: "not open yet",
        category_not_allowed: "category not allowed",
        merchant_suspended: "store suspended",
        terminal_suspended: "terminal suspended",
        reversed: "reversed",
        offline_not_enabled: "terminal not allowed offline",
        captured_in_future: "captured in the future",
        late: "forwarded too late",
        outside_window: "outside the tranche",
        offline_max_amount_exceeded: "above the offline maximum",
        offline_allowance_exceeded: "offline allowance used up",
      },
    },
  };
  const LOCALE = { fa: "fa-IR", en: "en-GB" };
  const TZ = "Asia/Tehran";
  const TOKEN_KEY = "kalabarg.token";
  const LANG_KEY = "kalabarg.lang";
  const MINE_KEY = "kalabarg.province";
  const BASELINE_KEY = "kalabarg.rank-baseline";
  const COMPACT_FROM = 1e6; // numbers below this are shown whole
  const UNITS = {
    fa: [[1e15, "میلیون میلیارد"], [1e12, "هزار میلیارد"], [1e9, "میلیارد"], [1e6, "میلیون"], [1e3, "هزار"]],
    en: [[1e15, "Q"], [1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]],
  };
  const BINS = [0.2, 0.4, 0.6, 0.8]; // coverage class edges: c1..c5, c0 is nobody served
  const ACTIVITY_EVERY_MS = 15000;
  const HISTORY_EVERY_MS = 60000;
  const MINUTES_EVERY_MS = 10000;

  const state = {
    lang: localStorage.getItem(LANG_KEY) === "en" ? "en" : "fa",
    token: sessionStorage.getItem(TOKEN_KEY),
    mine: localStorage.getItem(MINE_KEY) || "",
    tranche: "",
    tranches: [],
    latest: null,
    activity: null, // code -> declines, reversals, today's figures
    minutes: null, // /v1/stats/history?bucket=minute
    hours: null,
    days: null,
    selected: null, // the province whose details show under the map
    sort: { key: "rank", dir: 1 },
    source: null,
    stale: false,
    lastUpdate: null, // Date of the last snapshot received
    map: null, // {width, height, shapes}
    charts: {},
    fetchedAt: { activity: 0, minutes: 0, history: 0 },
  };

  const $ = (id) => document.getElementById(id);
  const t = (key) => TEXT[state.lang][key];

  // -- formatting: Persian digits in Persian, Solar Hijri in Persian, Gregorian in English -----

  function formatNumber(value, lang = state.lang, options = {}) {
    return new Intl.NumberFormat(LOCALE[lang], options).format(value);
  }

  function formatPercent(value, lang = state.lang) {
    return formatNumber(value, lang, { style: "percent", minimumFractionDigits: 1, maximumFractionDigits: 1 });
  }

  // 12345678901234 -> "12.3 T" / "۱۲٫۳ هزار میلیارد"; below COMPACT_FROM the whole number.
  function compact(value, lang = state.lang, from = COMPACT_FROM) {
    const size = Math.abs(value);
    if (size < from) return formatNumber(value, lang);
    const [unit, name] = UNITS[lang].find(([u]) => size >= u);
    const scaled = value / unit;
    const digits = Math.abs(scaled) < 100 ? 1 : 0;
    return `${formatNumber(scaled, lang, { maximumFractionDigits: digits })} ${name}`;
  }

  function withRials(text, lang = state.lang) {
    return `${text} ${TEXT[lang].rials}`;
  }

  // The date and time of `date` in Tehran on the Solar Hijri calendar, in parts.
  function solarHijri(date, lang = state.lang) {
    const parts = {};
    const format = new Intl.DateTimeFormat(`${LOCALE[lang]}-u-ca-persian-nu-${lang === "fa" ? "arabext" : "latn"}`, {
      timeZone: TZ,
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

  // The page's calendar: Solar Hijri in Persian, Gregorian in English, always Tehran time.
  function calendarDate(date, lang = state.lang, options = { weekday: "long", year: "numeric", month: "long", day: "numeric" }) {
    if (lang === "fa") {
      // Chromium orders these parts oddly ("۱۴۰۵ آذر ۹, دوشنبه"): put them in Persian order
      const format = new Intl.DateTimeFormat("fa-IR-u-ca-persian-nu-arabext", { timeZone: TZ, ...options });
      const parts = {};
      for (const part of format.formatToParts(date)) parts[part.type] = part.value;
      if (parts.year) parts.year = parts.year.replace(/\s*ه\.ش\.$/u, "");
      return ["weekday", "day", "month", "year"].filter((k) => parts[k]).map((k) => parts[k]).join(" ");
    }
    return new Intl.DateTimeFormat("en-GB", { timeZone: TZ, ...options }).format(date);
  }

  function clockTime(date, lang = state.lang, seconds = true) {
    return new Intl.DateTimeFormat(`${LOCALE[lang]}-u-nu-${lang === "fa" ? "arabext" : "latn"}`, {
      timeZone: TZ,
      hour: "2-digit",
      minute: "2-digit",
      ...(seconds ? { second: "2-digit" } : {}),
      hourCycle: "h23",
    }).format(date);
  }

  function dateTime(date, lang = state.lang) {
    const day = calendarDate(date, lang, { year: "numeric", month: "long", day: "numeric" });
    return `${day}${lang === "fa" ? "،" : ","} ${clockTime(date, lang)}`;
  }

  function tehranDay(date) {
    return new Intl.DateTimeFormat("en-CA", { timeZone: TZ }).format(date); // YYYY-MM-DD
  }

  function ago(seconds, lang = state.lang) {
    const format = new Intl.RelativeTimeFormat(LOCALE[lang], { numeric: "always" });
    return seconds < 90 ? format.format(-seconds, "second") : format.format(-Math.round(seconds / 60), "minute");
  }

  // A figure that may be shortened: the exact value in its title, and on a tap.
  function setFigure(el, value, { rials = false } = {}) {
    const exact = formatNumber(value);
    const short = compact(value);
    const exactText = rials ? withRials(exact) : exact;
    const shortText = rials ? withRials(short) : short;
    el.dataset.value = String(value);
    el.dataset.exactText = exactText;
    el.dataset.shortText = shortText;
    el.title = exactText;
    el.textContent = el.classList.contains("exact") ? exactText : shortText;
  }

  function toggleExact(event) {
    const el = event.target.closest("[data-exact-text]");
    if (!el) return;
    el.classList.toggle("exact");
    el.textContent = el.classList.contains("exact") ? el.dataset.exactText : el.dataset.shortText;
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
    fillTranches();
    buildHead();
    if (state.latest) render(state.latest);
    drawCharts(true);
  }

  function setStatus(name) {
    const el = $("status");
    el.dataset.state = name;
    el.textContent = name === "idle" ? "" : t(name);
  }

  // -- talking to the service ----------------------------------------------------------------

  async function api(path) {
    const resp = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
    if (resp.status === 401) {
      signOut(t("bad_token"));
      return null;
    }
    return resp.ok ? resp.json() : null;
  }

  function trancheQuery(extra = {}) {
    const params = new URLSearchParams(extra);
    if (state.tranche) params.set("tranche_id", state.tranche);
    const text = params.toString();
    return text ? `?${text}` : "";
  }

  // -- sign-in -------------------------------------------------------------------------------

  function showLogin(message) {
    if (state.source) state.source.close();
    state.source = null;
    $("board").hidden = true;
    $("logout").hidden = true;
    $("tranche-label").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setStale(false);
    setStatus("idle");
    $("token").focus();
  }

  function signOut(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  async function signIn(token) {
    // one plain request tells a bad token from a good one before streaming
    const resp = await fetch("/v1/stats", { headers: { Authorization: `Bearer ${token}` } }).catch(() => null);
    if (!resp || resp.status === 401 || resp.status === 403) {
      signOut(t("bad_token"));
      return;
    }
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    // a provincial token's province is pinned, unless this browser already chose one
    const scoped = resp.headers.get("X-Token-Province");
    if (scoped && !localStorage.getItem(MINE_KEY)) state.mine = scoped;
    $("login").hidden = true;
    $("board").hidden = false;
    $("logout").hidden = false;
    state.lastUpdate = new Date();
    render(await resp.json());
    connect();
    await loadTranches();
    refresh(true);
  }

  // Tranche names and windows: readable by operators and auditors alike.
  async function loadTranches() {
    const body = await api("/v1/stats/tranches");
    state.tranches = body ? body.tranches : [];
    fillTranches();
  }

  function trancheLabel(tr) {
    const options = { month: "long", day: "numeric" };
    const from = calendarDate(new Date(tr.starts_at), state.lang, options);
    const until = calendarDate(new Date(tr.ends_at), state.lang, { ...options, year: "numeric" });
    return `${tr.name} (${from} – ${until})`;
  }

  function fillTranches() {
    const select = $("tranche");
    for (const option of [...select.options]) if (option.value !== "") option.remove();
    for (const tr of state.tranches) {
      const option = document.createElement("option");
      option.value = String(tr.id);
      option.textContent = trancheLabel(tr);
      select.append(option);
    }
    select.value = state.tranche;
    $("tranche-label").hidden = state.tranches.length === 0 || !state.token;
  }

  // -- the stream, and the stale state when it drops ------------------------------------------

  function connect() {
    if (state.source) state.source.close();
    const params = new URLSearchParams({ access_token: state.token });
    if (state.tranche) params.set("tranche_id", state.tranche);
    const source = new EventSource(`/v1/stats/stream?${params}`);
    state.source = source;
    setStatus("connecting");
    source.addEventListener("stats", (event) => {
      if (state.source !== source) return;
      const wasStale = state.stale;
      setStatus("live");
      state.lastUpdate = new Date();
      setStale(false);
      render(JSON.parse(event.data));
      refresh(wasStale);
    });
    source.addEventListener("error", async () => {
      if (state.source !== source) return;
      setStatus(source.readyState === EventSource.CLOSED ? "down" : "connecting");
      setStale(true);
      // EventSource retries by itself; a token revoked meanwhile would retry forever
      const resp = await fetch("/v1/stats", { headers: { Authorization: `Bearer ${state.token}` } }).catch(() => null);
      if (resp && (resp.status === 401 || resp.status === 403)) signOut(t("bad_token"));
      else if (source.readyState === EventSource.CLOSED && state.source === source) {
        setTimeout(() => state.source === source && connect(), 2000);
      }
    });
  }

  function setStale(stale) {
    state.stale = stale;
    document.body.classList.toggle("stale", stale);
    $("stale").hidden = !stale;
    tickStale();
  }

  function tickStale() {
    if (!state.stale || !state.lastUpdate) return;
    const seconds = Math.max(0, Math.round((Date.now() - state.lastUpdate.getTime()) / 1000));
    $("stale-age").textContent = `${ago(seconds)} (${dateTime(state.lastUpdate)})`;
  }

  // Declines, reversals and history are polled, not streamed; only while the stream is live.
  async function refresh(now = false) {
    if (!state.token || (state.stale && !now)) return;
    const due = (what, every) => now || Date.now() - state.fetchedAt[what] >= every;
    const jobs = [];
    if (due("activity", ACTIVITY_EVERY_MS)) {
      state.fetchedAt.activity = Date.now();
      jobs.push(
        api(`/v1/stats/activity${trancheQuery()}`).then((body) => {
          if (!body) return;
          state.activity = Object.fromEntries(body.provinces.map((p) => [p.code, p]));
          if (state.latest) render(state.latest);
        }),
      );
    }
    if (due("minutes", MINUTES_EVERY_MS)) {
      state.fetchedAt.minutes = Date.now();
      jobs.push(api(`/v1/stats/history${trancheQuery({ bucket: "minute" })}`).then((body) => { if (body) state.minutes = body; }));
    }
    if (due("history", HISTORY_EVERY_MS)) {
      state.fetchedAt.history = Date.now();
      jobs.push(api(`/v1/stats/history${trancheQuery({ bucket: "hour" })}`).then((body) => { if (body) state.hours = body; }));
      jobs.push(api(`/v1/stats/history${trancheQuery({ bucket: "day" })}`).then((body) => { if (body) state.days = body; }));
    }
    await Promise.all(jobs.map((job) => job.catch(() => null)));
    drawCharts(false);
  }

  // -- drawing -------------------------------------------------------------------------------

  function provinceName(p) {
    return state.lang === "fa" ? p.name_fa : p.name_en;
  }

  function coverageClass(p) {
    if (p.served_households === 0) return "c0";
    return `c${1 + BINS.filter((edge) => p.coverage >= edge).length}`;
  }

  function activityOf(code) {
    return (state.activity && state.activity[code]) || null;
  }

  function render(stats) {
    if (state.latest && stats.tranche_id !== state.latest.tranche_id) state.minutes = null;
    state.latest = stats;
    const totals = stats.totals;
    setFigure($("total-transactions"), totals.transactions);
    setFigure($("total-served"), totals.served_households);
    setFigure($("total-eligible"), totals.eligible_households);
    $("total-coverage").textContent = formatPercent(totals.coverage);
    setFigure($("total-amount"), totals.amount, { rials: true });
    $("as-of").textContent = dateTime(new Date(stats.as_of));
    renderMine(stats);
    renderTable(stats);
    paintMap(stats);
    renderDetail();
  }

  // -- my province ---------------------------------------------------------------------------

  function fillMineSelect(stats) {
    const select = $("mine-select");
    const names = stats.provinces.map((p) => [p.code, provinceName(p)]);
    names.sort((a, b) => a[1].localeCompare(b[1], LOCALE[state.lang]));
    const key = `${state.lang}:${names.length}`;
    if (select.dataset.key !== key) {
      const first = document.createElement("option");
      first.value = "";
      first.textContent = t("choose");
      select.replaceChildren(
        first,
        ...names.map(([code, name]) => {
          const option = document.createElement("option");
          option.value = code;
          option.textContent = name;
          return option;
        }),
      );
      select.dataset.key = key;
    }
    select.value = state.mine;
  }

  // The rank at the first look today, kept per browser: "up 2 since 08:14".
  function rankBaseline(code, rank) {
    const day = tehranDay(new Date());
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(BASELINE_KEY) || "null");
    } catch {
      saved = null;
    }
    const scope = `${day}|${state.tranche}|${code}`;
    if (!saved || saved.scope !== scope) {
      saved = { scope, rank, at: Date.now() };
      localStorage.setItem(BASELINE_KEY, JSON.stringify(saved));
    }
    return saved;
  }

  function renderMine(stats) {
    fillMineSelect(stats);
    const p = stats.provinces.find((x) => x.code === state.mine);
    $("mine-empty").hidden = Boolean(p);
    $("mine-body").hidden = !p;
    if (!p) return;
    const of = formatNumber(stats.provinces.length);
    $("mine-rank").textContent = `${provinceName(p)} — ${t("rank_of")(formatNumber(p.rank), of)}`;
    const base = rankBaseline(p.code, p.rank);
    const at = clockTime(new Date(base.at), state.lang, false);
    const change = $("mine-rank-change");
    const moved = base.rank - p.rank;
    change.className = `change ${moved > 0 ? "up" : moved < 0 ? "down" : ""}`;
    change.textContent =
      moved > 0 ? t("rank_up")(formatNumber(moved), at) : moved < 0 ? t("rank_down")(formatNumber(-moved), at) : t("rank_same")(at);
    $("mine-coverage").textContent = formatPercent(p.coverage);
    $("mine-served").textContent = `${formatNumber(p.served_households)} / ${formatNumber(p.eligible_households)}`;
    setFigure($("mine-transactions"), p.transactions);
    setFigure($("mine-amount"), p.amount, { rials: true });
    const act = activityOf(p.code);
    $("mine-today").textContent = act
      ? t("today_figures")(`${act.today_transactions >= 0 ? "+" : ""}${formatNumber(act.today_transactions)}`, withRials(compact(act.today_amount)))
      : "—";
  }

  // -- the table -----------------------------------------------------------------------------

  const COLUMNS = [
    { key: "rank", label: "rank", num: true, value: (p) => p.rank },
    { key: "name", label: "province", num: false, value: (p) => provinceName(p) },
    { key: "transactions", label: "transactions", num: true, value: (p) => p.transactions },
    { key: "served", label: "served", num: true, value: (p) => p.served_households },
    { key: "eligible", label: "eligible", num: true, value: (p) => p.eligible_households },
    { key: "coverage", label: "coverage", num: true, value: (p) => p.coverage, percent: true },
    { key: "amount", label: "amount", num: true, value: (p) => p.amount, rials: true },
    { key: "declined", label: "declined", num: true, value: (p) => activityOf(p.code)?.declined ?? 0 },
    { key: "reversals", label: "reversals", num: true, value: (p) => activityOf(p.code)?.reversals ?? 0 },
  ];

  function buildHead() {
    const row = $("provinces-head");
    row.replaceChildren(
      ...COLUMNS.map((col) => {
        const th = document.createElement("th");
        th.className = col.num ? `num ${col.key}` : col.key;
        th.scope = "col";
        th.dataset.key = col.key;
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = col.rials ? `${t(col.label)} (${t("rials")})` : t(col.label);
        th.append(button);
        if (state.sort.key === col.key) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
        return th;
      }),
    );
  }

  function sortedRows(stats) {
    const col = COLUMNS.find((c) => c.key === state.sort.key) || COLUMNS[0];
    const rows = [...stats.provinces];
    rows.sort((a, b) => {
      const x = col.value(a);
      const y = col.value(b);
      const order = typeof x === "string" ? x.localeCompare(y, LOCALE[state.lang]) : x - y;
      return order * state.sort.dir || a.rank - b.rank;
    });
    return rows;
  }

  function renderTable(stats) {
    const body = document.querySelector("#provinces tbody");
    body.replaceChildren(
      ...sortedRows(stats).map((p) => {
        const tr = document.createElement("tr");
        tr.dataset.code = p.code;
        tr.className = [p.rank <= 5 && p.served_households > 0 ? "top" : "", p.code === state.mine ? "mine" : ""]
          .join(" ")
          .trim();
        for (const col of COLUMNS) {
          const td = document.createElement("td");
          td.className = col.num ? `num ${col.key}` : col.key;
          const value = col.value(p);
          if (col.percent) td.textContent = formatPercent(value);
          else if (col.rials) setFigure(td, value);
          else td.textContent = typeof value === "number" ? formatNumber(value) : value;
          tr.append(td);
        }
        return tr;
      }),
    );
  }

  function sortBy(event) {
    const th = event.target.closest("th[data-key]");
    if (!th) return;
    const key = th.dataset.key;
    const numeric = key !== "name" && key !== "rank";
    state.sort = state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: numeric ? -1 : 1 };
    buildHead();
    if (state.latest) renderTable(state.latest);
  }

  // What is on screen, in its order, with exact figures (a spreadsheet wants plain numbers).
  function exportCsv() {
    if (!state.latest) return;
    const quote = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));
    const header = ["code", ...COLUMNS.map((c) => (c.rials ? `${c.key}_rials` : c.key))];
    const lines = [header.join(",")];
    for (const p of sortedRows(state.latest)) {
      lines.push([p.code, ...COLUMNS.map((c) => c.value(p))].map(quote).join(","));
    }
    const asOf = new Date(state.latest.as_of);
    const blob = new Blob(["\ufeff", `${lines.join("\r\n")}\r\n`], { type: "text/csv;charset=utf-8" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `kalabarg-provinces-${tehranDay(asOf)}-${clockTime(asOf, "en").replace(/:/g, "")}.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  // -- the map -------------------------------------------------------------------------------

  async function loadMap() {
    const resp = await fetch("/dashboard/map.json");
    state.map = await resp.json();
    const svg = $("map");
    const ns = "http://www.w3.org/2000/svg";
    // room around the outline for the labels of border provinces
    const pad = 60;
    svg.setAttribute("viewBox", `${-pad} ${-pad / 3} ${state.map.width + 2 * pad} ${state.map.height + pad / 1.5}`);
    const shapes = [];
    const labels = [];
    for (const shape of state.map.shapes) {
      const path = document.createElementNS(ns, "path");
      path.setAttribute("d", shape.path);
      path.dataset.code = shape.code;
      path.setAttribute("tabindex", "0");
      path.setAttribute("role", "button");
      path.classList.add("c0");
      shapes.push(path);
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", String(shape.x));
      label.setAttribute("y", String(shape.y));
      label.dataset.code = shape.code;
      labels.push(label);
    }
    svg.replaceChildren(...shapes, ...labels);
    renderLegend();
    if (state.latest) paintMap(state.latest);
  }

  function renderLegend() {
    const edges = [0, ...BINS, 1];
    const items = [["c0", state.lang === "fa" ? "بدون خانوار بهره‌مند" : "nobody served"]];
    for (let i = 0; i < edges.length - 1; i += 1) {
      const whole = (v) => formatNumber(v, state.lang, { style: "percent", maximumFractionDigits: 0 });
      items.push([`c${i + 1}`, `${whole(edges[i])}–${whole(edges[i + 1])}`]);
    }
    $("map-legend").replaceChildren(
      ...items.map(([cls, text]) => {
        const li = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = `swatch ${cls}`;
        li.append(swatch, text);
        return li;
      }),
    );
  }

  function paintMap(stats) {
    if (!state.map) return;
    const byCode = Object.fromEntries(stats.provinces.map((p) => [p.code, p]));
    for (const path of $("map").querySelectorAll("path")) {
      const p = byCode[path.dataset.code];
      if (!p) continue;
      const cls = coverageClass(p);
      path.setAttribute("class", cls);
      path.classList.toggle("mine", p.code === state.mine);
      path.classList.toggle("selected", p.code === state.selected);
      path.setAttribute("aria-label", `${provinceName(p)}: ${t("coverage")} ${formatPercent(p.coverage)}, ${t("rank")} ${formatNumber(p.rank)}`);
    }
    for (const label of $("map").querySelectorAll("text")) {
      const p = byCode[label.dataset.code];
      if (!p) continue;
      label.textContent = provinceName(p);
      label.classList.toggle("on-dark", ["c4", "c5"].includes(coverageClass(p)));
    }
  }

  function selectProvince(code) {
    state.selected = code;
    if (state.latest) paintMap(state.latest);
    renderDetail();
  }

  function renderDetail() {
    const box = $("detail");
    const p = state.latest && state.latest.provinces.find((x) => x.code === state.selected);
    if (!p) {
      const hint = document.createElement("p");
      hint.className = "muted";
      hint.textContent = t("tap_hint");
      box.replaceChildren(hint);
      return;
    }
    const act = activityOf(p.code);
    const title = document.createElement("h3");
    title.textContent = `${provinceName(p)} — ${t("rank_of")(formatNumber(p.rank), formatNumber(state.latest.provinces.length))}`;
    const list = document.createElement("dl");
    const entry = (label, text, exact) => {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.className = "num";
      dd.textContent = text;
      if (exact) dd.title = exact;
      div.append(dt, dd);
      list.append(div);
    };
    entry(t("coverage"), formatPercent(p.coverage));
    entry(t("served"), `${formatNumber(p.served_households)} / ${formatNumber(p.eligible_households)}`);
    entry(t("transactions"), formatNumber(p.transactions));
    entry(t("amount"), withRials(compact(p.amount)), withRials(formatNumber(p.amount)));
    if (act) {
      const reasons = Object.entries(act.declines)
        .sort((a, b) => b[1] - a[1])
        .map(([reason, n]) => `${TEXT[state.lang].reasons[reason] || reason}: ${formatNumber(n)}`)
        .join(state.lang === "fa" ? "، " : ", ");
      entry(t("declined"), reasons ? `${formatNumber(act.declined)} (${reasons})` : formatNumber(0));
      entry(t("reversals"), `${formatNumber(act.reversals)} (${withRials(compact(act.reversed_amount))})`);
      entry(t("today"), t("today_figures")(formatNumber(act.today_transactions), withRials(compact(act.today_amount))));
      entry(t("offline_posted"), `${formatNumber(act.offline_posted)} (${withRials(compact(act.offline_posted_amount))})`);
      entry(t("offline_declined"), `${formatNumber(act.offline_declined)} (${withRials(compact(act.offline_declined_amount))})`);
    }
    box.replaceChildren(title, list);
  }

  // -- charts (uPlot) ------------------------------------------------------------------------

  function axisNumber(values) {
    return values.map((v) => (v == null ? "" : compact(v, state.lang, 1e4)));
  }

  // ticks a day or more apart show the date, closer ones the time of day
  function axisTime(u, values, axis, space, step) {
    return values.map((v) => {
      const date = new Date(v * 1000);
      if (step < 86400) return clockTime(date, state.lang, false);
      return calendarDate(date, state.lang, { month: "short", day: "numeric" });
    });
  }

  function chartWidth(box) {
    return Math.max(240, Math.floor(box.clientWidth));
  }

  function makeChart(id, series, xAxis, yLabel, data, timeScale) {
    const box = $(id);
    const ink = getComputedStyle(document.documentElement).color;
    const opts = {
      width: chartWidth(box),
      height: 190,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), TZ),
      scales: { x: { time: timeScale } },
      series: [{ label: xAxis.label, value: (u, v) => (v == null ? "—" : xAxis.legend(v)) }, ...series],
      axes: [
        { stroke: ink, values: xAxis.values, label: xAxis.label, labelSize: 20, size: 36, grid: { stroke: "#e3e8ec" } },
        { stroke: ink, values: (u, v) => axisNumber(v), label: yLabel, labelSize: 20, size: 56, grid: { stroke: "#e3e8ec" } },
      ],
      legend: { show: true, live: true },
      cursor: { drag: { x: false, y: false } },
    };
    if (state.charts[id]) state.charts[id].destroy();
    state.charts[id] = new uPlot(opts, data, box);
  }

  function line(label, color, fill) {
    return {
      label,
      stroke: color,
      width: 2,
      fill,
      spanGaps: true,
      value: (u, v) => (v == null ? "—" : formatNumber(v)),
    };
  }

  function minuteData() {
    const body = state.minutes;
    const end = Math.floor(Date.now() / 60000) * 60;
    const xs = [];
    const ys = [];
    const counts = new Map((body ? body.series : []).map((b) => [Math.floor(Date.parse(b.at) / 1000), b.transactions]));
    for (let at = end - 119 * 60; at <= end; at += 60) {
      xs.push(at);
      ys.push(counts.get(at) || 0);
    }
    return [xs, ys];
  }

  function cumulative(series, field) {
    let sum = 0;
    return series.map((b) => (sum += b[field]));
  }

  function servedData() {
    const body = state.hours;
    if (!body || !body.tranche) return null;
    const series = body.series;
    const xs = [Math.floor(Date.parse(body.tranche.starts_at) / 1000), ...series.map((b) => Math.floor(Date.parse(b.at) / 1000))];
    const ys = [0, ...cumulative(series, "served")];
    const end = Math.min(Date.now(), Date.parse(body.tranche.ends_at)) / 1000;
    if (end > xs[xs.length - 1]) {
      xs.push(Math.floor(end));
      ys.push(ys[ys.length - 1]);
    }
    return [xs, ys];
  }

  function compareData() {
    const body = state.days;
    if (!body || !body.tranche) return null;
    const byDay = (tranche, series) => {
      const start = Date.parse(tranche.starts_at);
      const days = new Map();
      for (const b of series) {
        const day = Math.floor((Date.parse(b.at) - start) / 86400000) + 1;
        days.set(Math.max(day, 1), (days.get(Math.max(day, 1)) || 0) + b.transactions);
      }
      return days;
    };
    const now = byDay(body.tranche, body.series);
    const before = body.previous ? byDay(body.previous, body.previous_series) : new Map();
    const elapsed = Math.max(1, Math.floor((Date.now() - Date.parse(body.tranche.starts_at)) / 86400000) + 1);
    const prevLength = body.previous
      ? Math.ceil((Date.parse(body.previous.ends_at) - Date.parse(body.previous.starts_at)) / 86400000)
      : 0;
    const last = Math.max(elapsed, prevLength, 2);
    const xs = [];
    const ys = [];
    const ps = [];
    let sumNow = 0;
    let sumBefore = 0;
    for (let day = 1; day <= last; day += 1) {
      xs.push(day);
      sumNow += now.get(day) || 0;
      sumBefore += before.get(day) || 0;
      ys.push(day <= elapsed ? sumNow : null);
      ps.push(body.previous && day <= prevLength ? sumBefore : null);
    }
    return [xs, ys, ps];
  }

  function drawCharts(rebuild) {
    if (typeof uPlot === "undefined" || $("board").hidden) return;
    const minutes = minuteData();
    const byDayLabel = (v) => formatNumber(v);
    if (rebuild || !state.charts["chart-tpm"]) {
      makeChart(
        "chart-tpm",
        [line(t("per_minute"), "#0f6e5f", "#0f6e5f22")],
        { label: t("time"), values: axisTime, legend: (v) => clockTime(new Date(v * 1000), state.lang, false) },
        t("per_minute"),
        minutes,
        true,
      );
    } else state.charts["chart-tpm"].setData(minutes);

    const served = servedData() || [[], []];
    if (rebuild || !state.charts["chart-served"]) {
      makeChart(
        "chart-served",
        [{ ...line(t("served"), "#1f5fa8", "#1f5fa822"), paths: uPlot.paths.stepped({ align: 1 }) }],
        { label: t("time"), values: axisTime, legend: (v) => dateTime(new Date(v * 1000)) },
        t("households"),
        served,
        true,
      );
    } else state.charts["chart-served"].setData(served);

    const compare = compareData() || [[], [], []];
    if (rebuild || !state.charts["chart-compare"]) {
      makeChart(
        "chart-compare",
        [line(t("this_tranche"), "#0f6e5f"), { ...line(t("previous_tranche"), "#8a6d00"), dash: [6, 4] }],
        { label: t("day_of_tranche"), values: (u, vs) => vs.map((v) => (Number.isInteger(v) ? byDayLabel(v) : "")), legend: byDayLabel },
        t("transactions"),
        compare,
        false,
      );
    } else state.charts["chart-compare"].setData(compare);
  }

  function resizeCharts() {
    for (const [id, chart] of Object.entries(state.charts)) {
      const width = chartWidth($(id));
      if (Math.abs(chart.width - width) > 2) chart.setSize({ width, height: 190 });
    }
  }

  function tick() {
    const now = new Date();
    $("clock-date").textContent = calendarDate(now);
    $("clock-time").textContent = clockTime(now);
    tickStale();
  }

  // -- start ---------------------------------------------------------------------------------

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
      state.minutes = state.hours = state.days = state.activity = null;
      connect();
      refresh(true);
    });
    $("mine-select").addEventListener("change", (event) => {
      state.mine = event.target.value;
      if (state.mine) localStorage.setItem(MINE_KEY, state.mine);
      else localStorage.removeItem(MINE_KEY);
      if (state.latest) render(state.latest);
    });
    $("map").addEventListener("click", (event) => {
      const path = event.target.closest("path[data-code]");
      if (path) selectProvince(path.dataset.code);
    });
    $("map").addEventListener("keydown", (event) => {
      const path = event.target.closest("path[data-code]");
      if (path && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        selectProvince(path.dataset.code);
      }
    });
    $("provinces").addEventListener("click", (event) => {
      if (event.target.closest("thead")) sortBy(event);
      else {
        const row = event.target.closest("tr[data-code]");
        if (row) selectProvince(row.dataset.code);
      }
    });
    $("board").addEventListener("click", toggleExact);
    $("export").addEventListener("click", exportCsv);
    $("print").addEventListener("click", () => window.print());
    if (typeof ResizeObserver !== "undefined") new ResizeObserver(resizeCharts).observe($("board"));
    applyLanguage();
    loadMap();
    setInterval(tick, 1000);
    setInterval(() => refresh(false), 5000);
    if (state.token) signIn(state.token);
    else showLogin();
  }

  // for the browser tests: the formatting the page uses
  window.kalabarg = { solarHijri, calendarDate, dateTime, formatNumber, formatPercent, compact };
  start();
})();
