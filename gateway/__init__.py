"""agent-gateway: one ASGI process hosting every service of an agent system."""

__version__ = "0.1.0"
