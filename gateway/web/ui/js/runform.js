// Run form: pick a service, edit its input as JSON (checked before sending), optionally a
// session; the task's page then shows its events and result as they arrive.

import { api, services } from "./api.js";
import { el } from "./dom.js";

const EXAMPLES = {
  workflow: '{\n  "message": "hello"\n}',
  component: '{\n  "text": "to be or not to be"\n}',
  agent: '"What is (3+4)*5?"',
  tool: '{\n  "tool": "add",\n  "kwargs": {"a": 1, "b": 2}\n}',
};

export async function runFormView(root) {
  const found = await services();
  const runnable = Object.values(found).filter((s) => s.type !== "human" && s.type !== "remote");
  const service = el("select", { id: "run-service", "aria-label": "service" },
    runnable.map((s) => el("option", { value: s.service_name }, `${s.service_name} (${s.type})`)));
  const input = el("textarea", { id: "run-input", "aria-label": "input (JSON)", spellcheck: "false" });
  const session = el("input", { id: "run-session", type: "text", placeholder: "session id (optional)" });
  const problem = el("div", { class: "error", id: "run-error", role: "alert" });
  const fill = () => {
    const chosen = found[service.value];
    input.value = EXAMPLES[chosen ? chosen.type : "workflow"] || "{}";
    problem.textContent = "";
  };
  service.addEventListener("change", fill);
  const form = el("form", {
    id: "run-form",
    onsubmit: async (event) => {
      event.preventDefault();
      problem.textContent = "";
      let value;
      try {
        value = JSON.parse(input.value);
      } catch (error) {
        problem.textContent = `The input is not valid JSON: ${error.message}`;
        return;
      }
      try {
        const accepted = await api("/control_plane/tasks", {
          method: "POST",
          body: { service: service.value, input: value, session_id: session.value.trim() || undefined },
        });
        window.location.hash = `#/task/${encodeURIComponent(accepted.task_id)}`;
      } catch (error) {
        problem.textContent = error.message;
      }
    },
  },
  el("p", {}, el("label", {}, "Service ", service)),
  el("p", {}, el("label", {}, "Input (JSON)", input)),
  el("p", {}, el("label", {}, "Session ", session)),
  problem,
  el("button", { type: "submit" }, "Run"));
  root.append(el("h1", {}, "Run a service"), form);
  if (!runnable.length) problem.textContent = "No service here can be run.";
  fill();
  return null;
}
