// One task: its input, a status timeline, the live event stream, the result or the error, and
// Cancel while it runs.

import { ApiError, api, follow } from "./api.js";
import { el, json, link, status, when } from "./dom.js";

const TERMINAL = new Set(["completed", "failed", "cancelled", "timed_out"]);

export async function taskView(root, taskId) {
  const task = await api(`/control_plane/tasks/${encodeURIComponent(taskId)}`);
  const state = el("span", { id: "task-status" }, status(task.status));
  const cancel = el("button", { type: "button", id: "cancel" }, "Cancel");
  const problem = el("span", { class: "error", role: "alert" });
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  const events = el("ol", { class: "events", id: "events" });
  const outcome = el("div", { id: "outcome" });
  root.append(
    el("h1", {}, `Task ${task.task_id}`),
    el("div", { class: "row" },
      el("span", {}, "service ", link("#/services", task.service)),
      task.session_id ? link(`#/sessions/${encodeURIComponent(task.session_id)}`, `session ${task.session_id}`) : null,
      state, cancel, problem),
    el("h2", {}, "Input"), json(task.input),
    el("h2", {}, "Status"), timeline,
    el("h2", {}, "Events"), events,
    el("h2", {}, "Outcome"), outcome,
  );

  function settle(current) {
    state.replaceChildren(status(current.status));
    cancel.hidden = TERMINAL.has(current.status);
    if (!TERMINAL.has(current.status)) return;
    outcome.replaceChildren(
      current.status === "completed"
        ? el("div", { id: "result" }, json(current.result))
        : el("div", { id: "error", class: "error" }, current.error || current.status),
    );
  }

  cancel.addEventListener("click", async () => {
    problem.textContent = "";
    try {
      settle(await api(`/control_plane/tasks/${encodeURIComponent(taskId)}/cancel`, { method: "POST" }));
    } catch (error) {
      problem.textContent = error instanceof ApiError ? error.message : String(error);
    }
  });
  settle(task);

  const stream = follow(`/control_plane/tasks/${encodeURIComponent(taskId)}/events`, {
    onEvent: ({ event, data }) => {
      if (event === "status") {
        timeline.append(el("li", {}, when(data.at), " ", status(data.status)));
        state.replaceChildren(status(data.status));
      } else if (event === "event") {
        events.append(el("li", {}, `${data.name} `, JSON.stringify(data.data)));
      } else if (event === "gap") {
        events.append(el("li", { class: "muted" }, `(${data.data.dropped} earlier events are no longer held)`));
      } else if (event === "result") {
        api(`/control_plane/tasks/${encodeURIComponent(taskId)}`).then(settle, () => {});
      }
    },
    onError: (error) => { problem.textContent = error.message; },
  });
  return () => stream.close();
}
