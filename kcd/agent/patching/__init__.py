"""Apply patches in pure Python: unified diffs and the `*** Begin Patch` format.

The original KyleCode shelled out to `git apply` in a lazily created repository
and ran `git config --global safe.directory`, changing the host user's git
config; this module never runs git and never reads or writes git configuration.

Both entry points are all-or-nothing: every file section and hunk is checked
against the current workspace first, in memory, and only then is anything
written; a failure leaves the workspace untouched and says which file and which
hunk failed, and why. Every path goes through `resolve_tool_path`, so patches
cannot reach outside the workspace.

Context is always matched exactly (the line terminator of a file's last line
aside, see `unified._UnifiedApplier`): a hunk may be found at another position than
its header says (as `patch` does with "offset"), never applied where its
context differs.

Layout: `staging.py` (text model, reports, all-or-nothing staging), `unified.py`,
`begin_patch.py` (one format each).
"""

from kcd.agent.patching.begin_patch import apply_begin_patch
from kcd.agent.patching.staging import FileChange, PatchError, PatchReport
from kcd.agent.patching.unified import apply_unified_diff

__all__ = ["FileChange", "PatchError", "PatchReport", "apply_begin_patch", "apply_unified_diff"]
