// Services: type, prefix, queue depth (tasks not yet finished), the running/paused switch of
// agents, and a link to each one's part of the API docs.

import { api, services } from "./api.js";
import { el, link } from "./dom.js";

async function depth(name) {
  const counts = await Promise.all(
    ["pending", "running"].map((s) =>
      api("/control_plane/tasks", { query: { service: name, status: s, limit: 1 } })
        .then((page) => page.total ?? 0, () => 0)),
  );
  return counts[0] + counts[1];
}

async function runningSwitch(service) {
  if (service.type !== "agent") return "";
  const box = el("input", { type: "checkbox", "aria-label": `${service.service_name} running` });
  const state = await api(`${service.prefix}/is_worker_running`).catch(() => null);
  box.checked = Boolean(state && state.running);
  box.addEventListener("change", async () => {
    const wanted = box.checked ? "running" : "stopped";
    try {
      const answer = await api(`${service.prefix}/toggle_agent_running`, {
        method: "POST",
        body: { state: wanted },
      });
      box.checked = Boolean(answer.running);
    } catch {
      box.checked = !box.checked;
    }
  });
  return el("label", {}, box, " running");
}

export async function servicesView(root) {
  const found = Object.values(await services(true));
  const body = el("tbody");
  root.append(
    el("h1", {}, "Services"),
    el("table", { id: "services" },
      el("thead", {}, el("tr", {}, ["name", "type", "prefix", "queue", "state", "docs"].map((h) => el("th", {}, h)))),
      body),
  );
  for (const service of found) {
    body.append(el("tr", { "data-service": service.service_name },
      el("td", {}, service.service_name, el("div", { class: "muted" }, service.description || "")),
      el("td", {}, service.type),
      el("td", {}, service.prefix || ""),
      el("td", {}, String(await depth(service.service_name))),
      el("td", {}, await runningSwitch(service)),
      el("td", {}, link(`/docs#/${encodeURIComponent(service.service_name)}`, "API"))));
  }
  return null;
}
