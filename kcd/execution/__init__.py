"""Executors: where a turn's tool calls run.

`base` (the `Executor` interface), `inprocess` (a worker thread of the daemon),
`ray_plane` (Ray tasks through the supervised driver of `kcd.rayplane`) and
`ray_auth` (Ray settings prepared for the driver without importing Ray).
"""
