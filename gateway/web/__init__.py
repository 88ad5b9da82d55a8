"""HTTP plumbing shared by the control plane and every service.

Typed routes (`routing.api_route`), the one JSON error shape (`errors`), middleware (auth, body
limit, CORS), the OpenAPI document and the docs page, SSE framing. It knows HTTP and the message
contracts, nothing about which services exist.
"""
