// Inbox: every pending human task of every human service, newest first, answered in place.
// The list follows the aggregate feed: questions appear and disappear without a reload.

import { ApiError, api, services, tasksOf } from "./api.js";
import { age, el, link } from "./dom.js";
import { listen } from "./feed.js";

async function humanServices() {
  const found = await services();
  return Object.values(found).filter((s) => s.type === "human");
}

async function pendingOf(service) {
  // Page by cursor: people answer while we read, and a cursor never skips a waiting question.
  const found = [];
  let after;
  do {
    const query = { limit: 1000, order: "desc" };
    if (after) query.after = after;
    const page = await api(`${service.prefix}/tasks`, { query });
    found.push(...tasksOf(page)); // the queue lists only questions still waiting
    after = page.next;
  } while (after);
  return found;
}

function parentTask(task) {
  const by = task.requested_by || {};
  return by.task_id || (task.task_id.includes("-human-") ? task.task_id.split("-human-")[0] : null);
}

export async function inboxView(root) {
  const humans = await humanServices();
  const prefixes = Object.fromEntries(humans.map((s) => [s.service_name, s.prefix]));
  const timeouts = {};
  await Promise.all(
    humans.map(async (s) => {
      const info = await api(`${s.prefix}/`).catch(() => ({}));
      timeouts[s.service_name] = info.timeout ?? null;
    }),
  );
  const list = el("div", { id: "inbox-list" });
  const empty = el("p", { class: "muted", id: "inbox-empty" }, "Nobody is waiting for an answer.");
  root.append(el("h1", {}, "Inbox"), empty, list);
  if (!humans.length) {
    empty.textContent = "This gateway has no human service.";
    return null;
  }
  const cards = new Map();

  function refreshEmpty() {
    empty.hidden = cards.size > 0;
  }

  function remove(taskId) {
    const card = cards.get(taskId);
    if (card) card.remove();
    cards.delete(taskId);
    refreshEmpty();
  }

  function add(task, service) {
    if (cards.has(task.task_id)) return;
    const input = el("input", {
      type: "text",
      class: "grow",
      "aria-label": `answer to ${task.task_id}`,
      placeholder: "Your answer, then Enter",
    });
    const problem = el("span", { class: "error", role: "alert" });
    const parent = parentTask(task);
    const timeout = timeouts[service];
    const form = el(
      "form",
      {
        class: "row",
        onsubmit: async (event) => {
          event.preventDefault();
          problem.textContent = "";
          try {
            await api(`${prefixes[service]}/tasks/${encodeURIComponent(task.task_id)}/handle`, {
              method: "POST",
              body: { result: input.value },
            });
            remove(task.task_id);
          } catch (error) {
            if (error instanceof ApiError && error.status === 409) {
              remove(task.task_id); // answered elsewhere, withdrawn or timed out meanwhile
            } else {
              problem.textContent = error.message;
            }
          }
        },
      },
      input,
      el("button", { type: "submit" }, "Send"),
      problem,
    );
    const card = el(
      "div",
      { class: "card", "data-task-id": task.task_id },
      el(
        "div",
        { class: "row muted" },
        el("span", {}, service),
        el("span", {}, task.task_id),
        parent ? link(`#/task/${encodeURIComponent(parent)}`, `run ${parent}`) : null,
        el("span", { title: new Date(task.created_at * 1000).toISOString() }, age(task.created_at)),
        timeout ? el("span", {}, `times out after ${timeout}s`) : null,
      ),
      el("div", { class: "prompt" }, task.prompt ?? task.input),
      form,
    );
    // newest first
    const after = [...cards.values()].find((c) => Number(c.dataset.created) < task.created_at);
    card.dataset.created = String(task.created_at);
    if (after) list.insertBefore(card, after);
    else list.append(card);
    cards.set(task.task_id, card);
    refreshEmpty();
  }

  // The current questions from the queues: cards for new ones, none for those gone.
  async function load() {
    const seen = new Set();
    for (const service of humans) {
      for (const task of await pendingOf(service)) {
        seen.add(task.task_id);
        add(task, service.service_name);
      }
    }
    for (const taskId of [...cards.keys()]) if (!seen.has(taskId)) remove(taskId);
    refreshEmpty();
  }

  const stop = listen(async (event) => {
    if (event.kind === "resync") return load().catch(() => {});
    if (event.kind !== "human") return;
    const service = event.data && event.data.service;
    if (!prefixes[service]) return;
    if (event.name === "created") {
      try {
        add(await api(`${prefixes[service]}/tasks/${encodeURIComponent(event.task_id)}`), service);
      } catch {
        /* already gone */
      }
    } else {
      remove(event.task_id);
    }
  });
  await load();
  return stop;
}

// The badge on the Inbox link: how many questions wait, kept current by the feed.
export async function pendingCount(badge) {
  const waiting = new Set();
  const render = () => {
    badge.textContent = String(waiting.size);
    badge.hidden = waiting.size === 0;
  };
  const load = async () => {
    const found = new Set();
    try {
      for (const service of await humanServices()) {
        for (const task of await pendingOf(service)) found.add(task.task_id);
      }
    } catch {
      return; /* the views report errors */
    }
    waiting.clear();
    for (const id of found) waiting.add(id);
    render();
  };
  if (stopCount) stopCount();
  stopCount = listen((event) => {
    if (event.kind === "resync") return load();
    if (event.kind !== "human") return;
    if (event.name === "created") waiting.add(event.task_id);
    else waiting.delete(event.task_id);
    render();
  });
  await load();
  render();
}
let stopCount = null;

