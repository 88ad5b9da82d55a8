"""Other serving protocols spoken over the same control plane and services.

`llama_agents`: the `WorkflowServer` HTTP API of llama-agents-server, so its client and UI hooks
work unchanged. A protocol only translates shapes; tasks, sessions, auth and limits are ours.
"""
