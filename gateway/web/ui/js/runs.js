// Runs: recent tasks of every service with live status, filters and cursor paging.

import { api, services, tasksOf } from "./api.js";
import { el, link, status, when } from "./dom.js";
import { listen } from "./feed.js";

const STATUSES = [
  "", "pending", "running", "waiting_for_human", "waiting_for_input",
  "completed", "failed", "cancelled", "timed_out",
];
const PAGE = 25;

export async function runsView(root) {
  const names = Object.keys(await services()).sort();
  const service = el("select", { "aria-label": "service" },
    el("option", { value: "" }, "every service"), names.map((n) => el("option", { value: n }, n)));
  const state = el("select", { "aria-label": "status" },
    STATUSES.map((s) => el("option", { value: s }, s || "any status")));
  const body = el("tbody");
  const more = el("button", { type: "button" }, "Older");
  const count = el("span", { class: "muted" });
  root.append(
    el("h1", {}, "Runs"),
    el("div", { class: "row" }, service, state, count),
    el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ["task", "service", "status", "created", "session"].map((h) => el("th", {}, h)))),
      body),
    el("p", {}, more),
  );
  const rows = new Map();
  let after = null; // cursor of the next (older) page: the list moves while it is read

  function row(task) {
    const tr = el("tr", { "data-task-id": task.task_id },
      el("td", {}, link(`#/task/${encodeURIComponent(task.task_id)}`, task.task_id)),
      el("td", {}, task.service),
      el("td", { class: "cell-status" }, status(task.status)),
      el("td", {}, when(task.created_at)),
      el("td", {}, task.session_id ? link(`#/sessions/${encodeURIComponent(task.session_id)}`, task.session_id) : ""));
    rows.set(task.task_id, tr);
    return tr;
  }

  async function load(reset) {
    if (reset) {
      after = null;
      rows.clear();
      body.replaceChildren();
    }
    const query = { limit: PAGE, service: service.value, status: state.value };
    if (after) query.after = after;
    const page = await api("/control_plane/tasks", { query });
    const items = tasksOf(page);
    for (const task of items) if (!rows.has(task.task_id)) body.append(row(task));
    after = page.next || null;
    count.textContent = `${page.total ?? rows.size} in all`;
    more.hidden = !after;
  }

  service.addEventListener("change", () => load(true));
  state.addEventListener("change", () => load(true));
  more.addEventListener("click", () => load(false));
  const stop = listen((event) => {
    if (event.kind === "resync") return load(true).catch(() => {});
    if (event.kind !== "status") return;
    const info = event.data || {};
    const known = rows.get(event.task_id);
    if (known) {
      const cell = known.querySelector(".cell-status");
      cell.replaceChildren(status(event.status));
      return;
    }
    const fits = (!service.value || info.service === service.value)
      && (!state.value || event.status === state.value);
    if (event.status === "pending" && fits) {
      body.prepend(row({ task_id: event.task_id, service: info.service, status: event.status,
        created_at: event.at, session_id: info.session_id }));
    }
  });
  await load(true);
  return stop;
}
