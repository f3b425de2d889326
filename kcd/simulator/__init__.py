"""Built-in OpenAI-compatible provider simulator.

behaviours: what the scripted model answers (with the `agents_*` modules:
scripted agents and the edit formats they use); delivery: how it is sent (the
fault seam); faults, fault_actions, fault_bodies: the fault catalogue F01–F33;
wire: OpenAI JSON/SSE shapes; control and namespaces: the ``/_sim`` control API
and per-client state; app: the ASGI app; server: uvicorn.
"""
