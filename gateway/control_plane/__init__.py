"""The control plane: accepts tasks, routes them over the bus, keeps exactly one terminal state.

It owns the task table, sessions and their lanes, the event hub behind the SSE streams, the
registry of discovered services, and the `/control_plane` routes. It talks to services only
through the bus and the registry; it never imports `services/` or the assembly.
"""
