"""Human-in-the-loop: a queue that people answer, and the bridge from a workflow's question to it.

`service` is the queue (HTTP + bus); `bridge` turns a workflow's `InputRequiredEvent` into a
human task and the answer back into a `HumanResponseEvent`.
"""
