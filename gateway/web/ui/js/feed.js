// One live subscription to the gateway's aggregate stream (GET /control_plane/events): task
// status changes and human-queue changes, fanned out to whichever views listen. No polling.

import { follow } from "./api.js";

const listeners = new Set();
let stream = null;

export function listen(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function start(onState) {
  if (stream) return;
  onState("live");
  stream = follow("/control_plane/events", {
    endless: true,
    after: Number.MAX_SAFE_INTEGER, // from now on: views load the current state themselves
    // After a reconnection or a gap, events may have been missed: a gateway that restarted
    // numbers its feed from 1 again, so the old position reads as "up to date" there. Views
    // then reload what they show ({kind: "resync"}) instead of trusting the stream.
    onOpen: (again) => {
      onState("live");
      if (again) resync();
    },
    onEvent: (frame) => {
      if (frame.event === "gap") return resync();
      if (!frame.data || typeof frame.data !== "object") return;
      for (const listener of listeners) listener(frame.data);
    },
    onError: () => {
      stream = null;
      onState("offline");
    },
  });
}

function resync() {
  for (const listener of listeners) listener({ kind: "resync" });
}

export function stop() {
  if (stream) stream.close();
  stream = null;
}
