"""The Ray execution plane: the driver process kcd supervises, and what the two say.

`driver` (the child process that owns the Ray connection), `messages` (its protocol
with kcd), `node_turn` (one turn's tool calls inside a Ray worker) and `wsync` (a
workspace as bytes between kcd's host and a node). kcd's side is
`kcd.execution.ray_plane`.
"""
