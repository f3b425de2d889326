"""The /etc a tool call sees: a private copy of an allow-list of small files, mounted as one
directory, with a few read-only directories (`bwrap.ETC_DIRS`) bound on top.

One bind of a prepared directory costs far less than binding each file
(measured: 18 binds added ~6 ms to every bubblewrap start). The copy is made
when the tool host starts and removed when it exits. Never present: shadow
files, sudoers, SSH host keys, /etc/ssl/private, kcd's own configuration.

Standard library only.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from kcd.sandbox.bwrap import ETC_DIRS, ETC_FILES

__all__ = ["build_etc_view"]

def build_etc_view() -> str:
    root = tempfile.mkdtemp(prefix="kcd-etc-")
    os.chmod(root, 0o755)  # the sandbox's uid 0 maps to ours; others never see the path
    for path in ETC_FILES:
        target = os.path.join(root, os.path.relpath(path, "/etc"))
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.islink(path):
                os.symlink(os.readlink(path), target)
            elif os.path.isfile(path):
                shutil.copy2(path, target)
        except OSError:
            continue  # unreadable or vanished: the sandbox simply lacks it
    for path in ETC_DIRS:  # mount points for the directories bound on top
        if os.path.isdir(path):
            os.makedirs(os.path.join(root, os.path.relpath(path, "/etc")), exist_ok=True)
    return root
