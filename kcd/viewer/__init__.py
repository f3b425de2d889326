"""The run viewer: read-only HTML pages of runs and of the daemon, under `/ui/`.

Served on the control socket (the peer's uid applies) and on a loopback TCP listener
(a viewer session cookie applies), with the ownership rules of `kcd.server.access`.

- `sessions.py`: one-time login tokens and session cookies, stored as digests;
- `tcpowner.py`: the local uid owning a loopback TCP client (sessions are honoured only from their own user);
- `confine.py`: which run files may be served, opened without leaving the run directory;
- `rundata.py`: a run directory's events read into attempts, skips, tool calls and markers;
- `timeline.py`: the per-turn attempt chart as inline SVG;
- `history.py`: the daemon's metrics sampled into a bounded ring, for the daemon page;
- `sparkline.py`: a metric's history as a small inline SVG chart;
- `markup.py`: HTML building blocks (escaping, the page shell, error pages, headers);
- `pages.py`: the pages and fragments, from the data above;
- `sse.py`: a run's events as Server-Sent Events, stopped when the browser leaves;
- `routes.py`: the `/ui/` handlers (who is asking, what they may see) and the session endpoint;
- `listener.py`: the TCP listener's ASGI app (Host check, only `/ui/`, the gateway's routes when shared).
"""
