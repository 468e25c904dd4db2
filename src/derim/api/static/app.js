// DERIM operator dashboard: the fleet with live power, one device's history, forecast and
// anomalies on an SVG chart, its commands and a control panel. A plain ES module: data comes
// from the REST API and the /api/v1/stream WebSocket, every text goes in as textContent.

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;
const KEY_STORAGE = "derim.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_LIVE_POINTS = 5000;
const STALE_MS = 15 * MINUTE_MS; // a device without a connection state reports if read since

// Commands offered per device type; those in TAKES_VALUE send the value field (kW).
const COMMANDS = {
  ev_charger: ["set_power_limit", "clear_power_limit", "start_charging", "stop_charging"],
  battery: ["battery_charge", "battery_discharge", "set_active_power", "connect", "disconnect"],
  other: ["set_power_limit", "clear_power_limit", "connect", "disconnect"],
};
const TAKES_VALUE = new Set([
  "set_power_limit", "set_active_power", "battery_charge", "battery_discharge",
]);
const STATE_EVENTS = {
  device_online: "online", device_degraded: "degraded", device_offline: "offline",
};

const state = {
  devices: new Map(), // id -> device view from GET /api/v1/devices
  power: new Map(), // id -> {kw, at}: the newest power reading seen
  selected: null, // id of the device in the detail view
  chart: null, // {history, live, forecast, anomalies} of the selected device
  socket: null,
  wasLive: false, // whether the stream has been connected before
  retryMs: 1000,
  timers: {},
};

const $ = (selector) => document.querySelector(selector);
const byTestId = (id) => $(`[data-testid="${id}"]`);

// ---- DOM helpers ----------------------------------------------------------------------------

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children.map((child) => (child instanceof Node ? child : String(child))));
  return node;
}
const el = (tag, attrs = {}, ...children) => build(document.createElement(tag), attrs, children);
const svg = (tag, attrs = {}, ...children) =>
  build(document.createElementNS(SVG_NS, tag), attrs, children);

function notice(text) {
  const box = byTestId("notice");
  box.textContent = text;
  box.hidden = !text;
}

const formatKw = (kw) => `${kw.toFixed(2)} kW`;
const formatTime = (iso) =>
  iso ? new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "";

// Run fn once, delay ms after the last call with the same name.
function debounce(name, delay, fn) {
  clearTimeout(state.timers[name]);
  state.timers[name] = setTimeout(fn, delay);
}

// ---- API ------------------------------------------------------------------------------------

const apiKey = () => localStorage.getItem(KEY_STORAGE) ?? "";
const path = (id) => encodeURIComponent(id);

// fetch with the operator's key; resolves to {status, ok, body} with the JSON body or null
// (status 0 when the API cannot be reached).
async function api(url, { method = "GET", json } = {}) {
  const headers = {};
  if (apiKey()) headers["X-API-Key"] = apiKey();
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const body = json === undefined ? undefined : JSON.stringify(json);
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (error) {
    notice(`cannot reach the API: ${error.message}`);
    return { status: 0, ok: false, body: null };
  }
  const isJson = (response.headers.get("content-type") ?? "").includes("json");
  const data = isJson ? await response.json() : null;
  if (response.status === 401) notice(`${data?.detail ?? "unauthorised"}: enter an API key above.`);
  return { status: response.status, ok: response.ok, body: data };
}

function errorText(status, body) {
  const fields = (body?.errors ?? []).map((e) => `${e.field}: ${e.message}`);
  return [`HTTP ${status}`, body?.detail, ...fields].filter(Boolean).join(" · ");
}

// ---- fleet ----------------------------------------------------------------------------------

async function loadFleet() {
  const { ok, body } = await api("/api/v1/devices");
  if (!ok) return;
  notice("");
  state.devices = new Map(body.map((device) => [device.id, device]));
  renderFleet();
  // The latest stored reading of each device, until the stream brings a newer one.
  await Promise.all(
    body.map(async ({ id }) => {
      const latest = await api(`/api/v1/telemetry/${path(id)}/latest`);
      if (latest.ok && typeof latest.body.power_kw === "number") {
        setPower(id, latest.body.power_kw, latest.body.timestamp);
      }
    }),
  );
}

const rowOf = (id) => $(`tr[data-device-id="${CSS.escape(id)}"]`);

function renderFleet() {
  const rows = [...state.devices.values()].map((device) => {
    const row = el(
      "tr",
      { "data-testid": "device-row", "data-device-id": device.id, tabindex: "0" },
      el("td", {}, el("strong", {}, device.id), el("div", { class: "muted" }, device.name)),
      el("td", {}, device.device_type),
      el("td", {}, el("span", { class: "badge", "data-testid": "device-state" })),
      el("td", { class: "num", "data-testid": "live-power" }, "–"),
    );
    row.addEventListener("click", () => select(device.id));
    row.addEventListener("keydown", (event) => event.key === "Enter" && select(device.id));
    return row;
  });
  byTestId("fleet").tBodies[0].replaceChildren(...rows);
  for (const id of state.devices.keys()) {
    renderState(id);
    renderPower(id);
  }
  rowOf(state.selected)?.classList.add("selected");
}

// The connection state DERIM follows; for a device without one (it pushes its readings, or a
// charger that never connected), whether a reading came in the last STALE_MS.
function renderState(id) {
  const badge = rowOf(id)?.querySelector("[data-testid=device-state]");
  if (!badge) return;
  const { status } = state.devices.get(id);
  const at = state.power.get(id)?.at;
  const fresh = at !== undefined && Date.now() - Date.parse(at) < STALE_MS;
  badge.textContent = status?.state ?? (fresh ? "reporting" : "silent");
  badge.dataset.state = badge.textContent;
  badge.title = status?.last_error ?? (at ? `last reading ${formatTime(at)}` : "no readings");
}

function setPower(id, kw, at) {
  const previous = state.power.get(id);
  if (previous && Date.parse(previous.at) > Date.parse(at)) return;
  state.power.set(id, { kw, at });
  renderPower(id);
  if (!state.devices.get(id)?.status) renderState(id);
}

function renderPower(id) {
  const cell = rowOf(id)?.querySelector("[data-testid=live-power]");
  const power = state.power.get(id);
  if (!cell || !power) return;
  cell.textContent = formatKw(power.kw);
  cell.title = `at ${formatTime(power.at)}`;
}

// ---- live stream ----------------------------------------------------------------------------

function setStreamState(text, title = "") {
  const badge = byTestId("stream-state");
  badge.textContent = `stream: ${text}`;
  badge.dataset.state = text;
  badge.title = title;
}

function connectStream() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams({ field: "power_kw" });
  if (apiKey()) params.set("api_key", apiKey());
  const socket = new WebSocket(`${scheme}//${location.host}/api/v1/stream?${params}`);
  state.socket = socket;
  setStreamState("connecting");
  socket.addEventListener("message", (message) => {
    state.retryMs = 1000;
    onStreamMessage(JSON.parse(message.data));
  });
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return; // replaced after a key change
    if (event.code === 4401 || event.code === 4403) {
      setStreamState("refused", event.reason);
      return; // retried when a key is entered
    }
    setStreamState("reconnecting", event.reason);
    setTimeout(connectStream, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 30_000);
  });
}

function onStreamMessage(message) {
  if (message.type === "hello") {
    if (state.wasLive) loadFleet(); // catch up on states changed while reconnecting
    state.wasLive = true;
    setStreamState("live");
  }
  if (message.type === "gap") setStreamState("live", `${message.lost} messages skipped`);
  if (message.type === "event") onEvent(message);
  if (message.type !== "telemetry") return;
  for (const record of message.records) {
    if (!state.devices.has(record.device_id)) debounce("fleet", 500, loadFleet); // a new device
    if (typeof record.power_kw !== "number") continue;
    setPower(record.device_id, record.power_kw, record.timestamp);
    if (record.device_id === state.selected) addLivePoint(record);
  }
}

function onEvent({ event, device_id: id, data }) {
  const device = state.devices.get(id);
  if (!device) {
    debounce("fleet", 500, loadFleet); // a device registered since the list was loaded
    return;
  }
  if (event in STATE_EVENTS) {
    device.status = { ...device.status, state: STATE_EVENTS[event], last_error: data.reason };
    renderState(id);
  }
  if (id !== state.selected) return;
  if (event === "command_result") debounce("commands", 200, () => loadCommands(id));
  if (event === "anomaly") {
    addAnomaly(data);
    renderChart();
  }
}

// ---- device detail --------------------------------------------------------------------------

async function select(id) {
  const device = state.devices.get(id);
  state.selected = id;
  document.querySelectorAll("tr.selected").forEach((row) => row.classList.remove("selected"));
  rowOf(id)?.classList.add("selected");
  byTestId("detail").hidden = false;
  byTestId("detail-title").textContent = device.name ? `${device.name} (${id})` : id;
  byTestId("detail-type").textContent = device.device_type;
  byTestId("forecast-state").textContent = "";
  byTestId("command-result").textContent = "";
  byTestId("command-history").tBodies[0].replaceChildren();
  fillCommands(device.device_type);
  state.chart = { history: [], live: [], forecast: null, anomalies: new Map() };
  renderChart();

  const start = new Date(Date.now() - DAY_MS).toISOString();
  const span = new URLSearchParams({ start });
  const history = new URLSearchParams({ start, fields: "power_kw", every: "15m", agg: "mean" });
  const [measured, forecast, anomalies] = await Promise.all([
    api(`/api/v1/telemetry/${path(id)}?${history}`),
    api(`/api/v1/forecast/${path(id)}?horizon=24h`),
    api(`/api/v1/twin/${path(id)}/anomalies?${span}`),
    loadCommands(id),
  ]);
  if (state.selected !== id) return; // another device was chosen meanwhile
  if (measured.ok) {
    state.chart.history = measured.body.records
      .filter((r) => typeof r.power_kw === "number")
      .map((r) => ({ t: Date.parse(r.timestamp), v: r.power_kw }));
  }
  if (forecast.ok) {
    state.chart.forecast = forecast.body.points.map((p) => ({ ...p, t: Date.parse(p.timestamp) }));
  }
  let forecastText = `forecast: ${errorText(forecast.status, forecast.body)}`;
  if (forecast.ok) forecastText = `forecast: ${forecast.body.model} v${forecast.body.version}`;
  if (forecast.status === 404) forecastText = "no trained model";
  byTestId("forecast-state").textContent = forecastText;
  if (anomalies.ok) anomalies.body.forEach(addAnomaly);
  renderChart();
}

function addAnomaly(anomaly) {
  state.chart.anomalies.set(`${anomaly.kind}@${anomaly.start}`, anomaly);
}

function addLivePoint(record) {
  const live = state.chart.live;
  live.push({ t: Date.parse(record.timestamp), v: record.power_kw });
  if (live.length > MAX_LIVE_POINTS) live.splice(0, live.length - MAX_LIVE_POINTS);
  debounce("chart", 250, renderChart);
}

async function loadCommands(id) {
  const { ok, body } = await api(`/api/v1/devices/${path(id)}/commands?limit=20`);
  if (!ok || state.selected !== id) return;
  const rows = body.map((command) =>
    el(
      "tr",
      { "data-testid": "command-row" },
      el("td", {}, formatTime(command.history[0]?.[1])),
      el("td", {}, command.request.command),
      el("td", { class: "num" }, command.request.value ?? ""),
      el("td", {}, el("span", { class: "badge", "data-state": command.status }, command.status)),
      el("td", {}, command.message),
    ),
  );
  const none = el("tr", {}, el("td", { colspan: "5", class: "muted" }, "no commands yet"));
  byTestId("command-history").tBodies[0].replaceChildren(...(rows.length ? rows : [none]));
}

// ---- chart ----------------------------------------------------------------------------------

const W = 800;
const H = 300;
const PLOT = { left: 52, right: W - 12, top: 12, bottom: H - 28 }; // W x H is the viewBox

// A "nice" tick step (1, 2 or 5 times a power of ten) for about four intervals over span.
function tickStep(span) {
  const raw = span / 4;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * magnitude).find((step) => step >= raw);
}

// A point's SVG coordinates, to one decimal.
const xy = (scale, t, v) => `${scale.x(t).toFixed(1)},${scale.y(v).toFixed(1)}`;

// An SVG path through the points, broken where readings are more than gapMs apart.
function linePath(points, scale, gapMs) {
  let d = "";
  let previous = null;
  for (const { t, v } of points) {
    d += (previous === null || t - previous > gapMs ? "M" : "L") + xy(scale, t, v);
    previous = t;
  }
  return d;
}

// The time and power scales of the plot area, with the power range rounded to ticks.
function scales(t0, t1, values) {
  let [lo, hi] = [Math.min(...values), Math.max(...values)];
  if (hi - lo < 1e-6) hi = lo + 1;
  const step = tickStep(hi - lo);
  [lo, hi] = [Math.floor(lo / step) * step, Math.ceil(hi / step) * step];
  return {
    t0, t1, lo, hi, step,
    x: (t) => PLOT.left + ((t - t0) / (t1 - t0)) * (PLOT.right - PLOT.left),
    y: (v) => PLOT.bottom - ((v - lo) / (hi - lo)) * (PLOT.bottom - PLOT.top),
  };
}

// Grid lines and labels: kW on the left, local time every 6 h along the bottom.
function axes(scale) {
  const { x, y, step } = scale;
  const parts = [svg("text", { class: "tick", x: 4, y: PLOT.top + 4 }, "kW")];
  for (let v = scale.lo; v <= scale.hi + step / 2; v += step) {
    parts.push(
      svg("line", { class: "grid", x1: PLOT.left, x2: PLOT.right, y1: y(v), y2: y(v) }),
      svg("text", { class: "tick", x: PLOT.left - 6, y: y(v) + 4, "text-anchor": "end" },
        +v.toFixed(3)),
    );
  }
  const first = new Date(scale.t0);
  first.setHours(Math.ceil((first.getHours() + 1) / 6) * 6, 0, 0, 0); // local 00, 06, 12, 18 h
  for (let t = first.getTime(); t < scale.t1; t += 6 * HOUR_MS) {
    const label = new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    parts.push(
      svg("line", { class: "grid", x1: x(t), x2: x(t), y1: PLOT.top, y2: PLOT.bottom }),
      svg("text", { class: "tick", x: x(t), y: H - 8, "text-anchor": "middle" }, label),
    );
  }
  return parts;
}

// Each anomaly as a shaded span over the plot's height, its reason as the tooltip.
function anomalySpans(anomalies, scale) {
  const spans = [];
  for (const anomaly of anomalies) {
    const start = Math.max(Date.parse(anomaly.start), scale.t0);
    const end = Math.min(Date.parse(anomaly.end), scale.t1);
    if (end <= start) continue;
    const title = `${anomaly.kind} (${anomaly.severity}): ${anomaly.reason}`;
    const attrs = {
      class: `anomaly ${anomaly.severity}`,
      "data-testid": "anomaly-span",
      "data-kind": anomaly.kind,
      x: scale.x(start),
      y: PLOT.top,
      width: Math.max(scale.x(end) - scale.x(start), 2),
      height: PLOT.bottom - PLOT.top,
    };
    spans.push(svg("rect", attrs, svg("title", {}, title)));
  }
  return spans;
}

// The P10-P90 band (P90 forward, P10 back) and the dashed P50 line.
function forecastPaths(forecast, scale) {
  if (!forecast.length) return [];
  const upper = forecast.map((p) => xy(scale, p.t, p.p90));
  const lower = forecast.map((p) => xy(scale, p.t, p.p10)).reverse();
  const median = forecast.map((p) => ({ t: p.t, v: p.p50 }));
  return [
    svg("path", { class: "band", "data-testid": "forecast-band",
      d: `M${upper.join("L")}L${lower.join("L")}Z` }),
    svg("path", { class: "p50", "data-testid": "forecast-line",
      d: linePath(median, scale, Infinity) }),
  ];
}

// Last 24 h of measurements on the left of "now", the next 24 h of forecast on its right.
function renderChart() {
  const data = state.chart;
  const now = Date.now();
  const t0 = now - DAY_MS;
  const history = data.history.filter((p) => p.t >= t0);
  const live = data.live.filter((p) => p.t >= t0);
  const forecast = data.forecast ?? [];
  const values = [0, ...history.map((p) => p.v), ...live.map((p) => p.v)];
  values.push(...forecast.flatMap((p) => [p.p10, p.p90]));
  const scale = scales(t0, now + DAY_MS, values);

  const area = { x: PLOT.left, y: PLOT.top, width: PLOT.right - PLOT.left,
    height: PLOT.bottom - PLOT.top };
  const plot = svg("g", { "clip-path": "url(#plot-area)" },
    ...anomalySpans(data.anomalies.values(), scale),
    ...forecastPaths(forecast, scale),
    svg("path", { class: "history", "data-testid": "history-line",
      d: linePath(history, scale, 30 * MINUTE_MS) }),
    svg("path", { class: "live", "data-testid": "live-line",
      d: linePath(live, scale, 15 * MINUTE_MS) }),
    svg("line", { class: "now", x1: scale.x(now), x2: scale.x(now), y1: PLOT.top,
      y2: PLOT.bottom }),
  );
  const last = live.at(-1);
  if (last) {
    plot.append(svg("circle", { class: "live", "data-testid": "live-point",
      cx: scale.x(last.t), cy: scale.y(last.v), r: 3 }));
  }
  byTestId("chart").replaceChildren(
    svg("clipPath", { id: "plot-area" }, svg("rect", area)),
    ...axes(scale),
    plot,
    svg("text", { class: "tick", x: scale.x(now) + 4, y: PLOT.top + 10 }, "now"),
  );
}

// ---- control panel --------------------------------------------------------------------------

function fillCommands(deviceType) {
  const options = (COMMANDS[deviceType] ?? COMMANDS.other).map((command) =>
    el("option", { value: command }, command.replaceAll("_", " ")),
  );
  byTestId("command-select").replaceChildren(...options);
  syncValueField();
}

function syncValueField() {
  const needsValue = TAKES_VALUE.has(byTestId("command-select").value);
  const input = byTestId("command-value");
  input.disabled = !needsValue;
  input.required = needsValue;
}

function showResult(status, text) {
  const output = byTestId("command-result");
  output.dataset.status = status;
  output.textContent = text;
}

async function sendCommand(event) {
  event.preventDefault();
  const id = state.selected;
  const form = event.target;
  const request = { command: form.elements.command.value };
  if (TAKES_VALUE.has(request.command)) request.value = Number(form.elements.value.value);
  const button = byTestId("command-send");
  button.disabled = true;
  showResult("pending", `sending ${request.command} to ${id}…`);
  const url = `/api/v1/control/${path(id)}`;
  const { ok, status, body } = await api(url, { method: "POST", json: request });
  button.disabled = false;
  if (ok) {
    // The command's record: its final status and what the device answered.
    const parts = [body.status + (body.message ? `: ${body.message}` : "")];
    if (body.device_response) parts.push(`device: ${JSON.stringify(body.device_response)}`);
    showResult(body.status, parts.join(" · "));
  } else {
    showResult("refused", errorText(status, body));
  }
  await loadCommands(id);
}

// ---- start ----------------------------------------------------------------------------------

function useKey(event) {
  event.preventDefault();
  const key = event.target.elements.key.value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  notice("");
  const old = state.socket;
  state.socket = null;
  old?.close();
  connectStream();
  loadFleet().then(() => state.devices.has(state.selected) && select(state.selected));
}

byTestId("key-form").elements.key.value = apiKey();
byTestId("key-form").addEventListener("submit", useKey);
byTestId("command-form").addEventListener("submit", sendCommand);
byTestId("command-select").addEventListener("change", syncValueField);
setInterval(() => {
  // Keep "now" moving on the chart and let silent devices show as such.
  state.devices.forEach((_, id) => renderState(id));
  if (state.selected) renderChart();
}, MINUTE_MS);
connectStream();
loadFleet();
