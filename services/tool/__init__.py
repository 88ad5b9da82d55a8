"""Tool services: llama-index tools served over the bus and HTTP, and the stand-ins agents call.

`service` hosts tools (bounded worker `pool`, `adapt` for any tool's metadata and arguments);
`meta_tool` is what an agent holds for a tool that lives in another service.
"""
