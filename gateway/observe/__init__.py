"""What operators see: structured logs (off the event loop), Prometheus metrics and
OpenTelemetry traces (`tracing`, off by default).

Read-only observers of the runtime; nothing here changes how a task runs.
"""
