"""Built-in OpenAI-compatible provider simulator.

behaviours: what the scripted model answers; delivery: how it is sent (the
fault seam); wire: OpenAI JSON/SSE shapes; app: the ASGI app; server: uvicorn.
"""
