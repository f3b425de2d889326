"""kcd's tools: the catalogue, tool definition files, and the executor of one reply's calls.

Layout (one job per module):
- `spec`       ToolSpec / ParamSpec and argument checking
- `catalogue`  TOOL_SPECS (internal and OpenCode names), refused names, tool_schemas
- `registry`   load_tool_defs: YAML tool definitions → ToolRegistry
- `policy`     the per-reply rules (what may run together, and in which order)
- `run`        execute_calls: policy, ordering, sequential/parallel execution
- `handlers`   name → implementation
- `reading`, `listing`, `search`, `writing`, `edits`, `shell` (through `kcd.sandbox`): the tools
- `paths`, `results`: confinement and walking helpers; result tags

Importing this package never imports Ray.
"""

from kcd.agent.tools.catalogue import REFUSED_TOOLS, TOOL_SPECS, tool_schemas
from kcd.agent.tools.listing import LIST_DIR_MAX_ENTRIES
from kcd.agent.tools.registry import ToolRegistry, load_tool_defs
from kcd.agent.tools.run import execute_calls
from kcd.agent.tools.shell import shell_environment
from kcd.agent.tools.spec import ParamSpec, ToolSpec

__all__ = [
    "LIST_DIR_MAX_ENTRIES",
    "REFUSED_TOOLS",
    "TOOL_SPECS",
    "ParamSpec",
    "ToolRegistry",
    "ToolSpec",
    "execute_calls",
    "load_tool_defs",
    "shell_environment",
    "tool_schemas",
]
