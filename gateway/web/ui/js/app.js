// The console's shell: the token prompt, navigation between views, the live feed, the inbox badge.

import { ApiError, api, onUnauthorized, setToken, token } from "./api.js";
import { clear, el } from "./dom.js";
import * as feed from "./feed.js";
import { inboxView, pendingCount } from "./inbox.js";
import { runFormView } from "./runform.js";
import { runsView } from "./runs.js";
import { servicesView } from "./services.js";
import { sessionView, sessionsView } from "./sessions.js";
import { taskView } from "./task.js";

const routes = [
  [/^#\/inbox$/, inboxView],
  [/^#\/runs$/, runsView],
  [/^#\/run$/, runFormView],
  [/^#\/task\/(.+)$/, taskView],
  [/^#\/services$/, servicesView],
  [/^#\/sessions$/, sessionsView],
  [/^#\/sessions\/(.+)$/, sessionView],
];

let cleanup = null;

export function notice(text) {
  const box = document.getElementById("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

function askForToken(message) {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-error").textContent = message || "";
  document.getElementById("token-input").focus();
}

async function show() {
  if (cleanup) cleanup();
  cleanup = null;
  notice("");
  const hash = window.location.hash || "#/inbox";
  const view = document.getElementById("view");
  clear(view);
  for (const link of document.querySelectorAll("nav a[data-nav]")) {
    link.classList.toggle("active", hash.startsWith(`#/${link.dataset.nav}`));
  }
  for (const [pattern, render] of routes) {
    const match = hash.match(pattern);
    if (!match) continue;
    try {
      cleanup = (await render(view, ...match.slice(1).map(decodeURIComponent))) || null;
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) notice(error.message);
    }
    return;
  }
  view.append(el("p", {}, "No such page."));
}

async function start() {
  // Does this gateway want a token (and is the one we have right)?
  try {
    await api("/control_plane/services");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      askForToken(token() ? "That token was refused (401). Try another." : "");
      return;
    }
    notice(error.message);
  }
  document.getElementById("token-form").hidden = true;
  feed.start((state) => {
    document.getElementById("connection").textContent = state === "live" ? "● live" : "offline";
  });
  pendingCount(document.getElementById("inbox-count"));
  await show();
}

onUnauthorized(() => {
  feed.stop();
  askForToken(token() ? "That token was refused (401). Try another." : "");
});

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(document.getElementById("token-input").value.trim());
  start();
});
window.addEventListener("hashchange", show);
start();
