"""What operators see: structured logs (off the event loop) and Prometheus metrics.

Read-only observers of the runtime; nothing here changes how a task runs.
"""
