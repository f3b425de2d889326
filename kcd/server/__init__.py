"""The control API: HTTP over the Unix socket (and, for the gateway, loopback TCP).

- `http.py`: a small ASGI layer (router, body limit, the one KcError -> response mapping,
  `bind_tcp_socket`, `SocketInUse`);
- `app.py`: the control routes over `ControlServices`, which the daemon builds;
- `access.py`: who may do what (owner, operators, user mode);
- `peercred.py`: SO_PEERCRED and supplementary groups of a socket peer, read once per connection;
- `listener.py`: binding the 0660 control socket and serving an app on it with uvicorn.
"""
