"""Wire types and socket discovery shared by kcd and kcctl.

`types` (the control socket's request, response and event Structs), `typeinfo`
(pre-building their msgspec type info), `paths` (where the socket lives) and
`backoff` (retry timing shared by the dispatcher and the exporter).

This package depends on msgspec and the standard library only, so that
`kcctl` can import it without pulling in the daemon.
"""
