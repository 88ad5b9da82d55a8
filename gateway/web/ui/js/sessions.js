// Sessions: the list, and one session's tasks in order with its state.

import { api, tasksOf } from "./api.js";
import { el, json, link, status, when } from "./dom.js";

export async function sessionsView(root) {
  const page = await api("/control_plane/sessions/list", { query: { limit: 100 } });
  const body = el("tbody");
  for (const session of tasksOf(page)) {
    body.append(el("tr", {},
      el("td", {}, link(`#/sessions/${encodeURIComponent(session.session_id)}`, session.session_id)),
      el("td", {}, String((session.task_ids || []).length)),
      el("td", {}, when(session.created_at))));
  }
  root.append(
    el("h1", {}, "Sessions"),
    el("table", {}, el("thead", {}, el("tr", {}, ["session", "tasks", "created"].map((h) => el("th", {}, h)))), body),
  );
  return null;
}

export async function sessionView(root, sessionId) {
  const id = encodeURIComponent(sessionId);
  const [state, session] = await Promise.all([
    api(`/control_plane/sessions/${id}/state`),
    api(`/control_plane/sessions/${id}`),
  ]);
  // The session lists its tasks in the order they were submitted (the last 200 are shown).
  const ids = (session.task_ids || []).slice(-200);
  const tasks = await Promise.all(
    ids.map((taskId) => api(`/control_plane/tasks/${encodeURIComponent(taskId)}`).catch(() => null)),
  );
  const body = el("tbody");
  for (const task of tasks.filter(Boolean)) {
    body.append(el("tr", {},
      el("td", {}, link(`#/task/${encodeURIComponent(task.task_id)}`, task.task_id)),
      el("td", {}, task.service),
      el("td", {}, status(task.status)),
      el("td", {}, when(task.created_at))));
  }
  root.append(
    el("h1", {}, `Session ${sessionId}`),
    el("h2", {}, "Tasks, in order"),
    el("table", {}, el("thead", {}, el("tr", {}, ["task", "service", "status", "created"].map((h) => el("th", {}, h)))), body),
    el("h2", {}, "State"), json(state.state ?? state),
  );
  return null;
}
