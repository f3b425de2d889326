"""Wire types and socket discovery shared by kcd and kcctl.

This package depends on msgspec and the standard library only, so that
`kcctl` can import it without pulling in the daemon.
"""
