"""kcctl's commands, one module per command or command group (pip's layout).

`kcctl.cli` imports a module only when its command runs (or when its own `--help` is
asked for), so a command pays for its own imports and nobody else's.
"""
