"""Worker threads converting to a Struct type for the first time must not crash kcd.

msgspec's first build of a type's info is not thread-safe (kcd/api/typeinfo.py). Before
the fix, 8 threads loading the demo config at once in a fresh interpreter died with
SIGSEGV about half the time, and a daemon took `kcctl run`s and matrices down with it.
Each check runs in a fresh interpreter, since the type info is cached per process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

RACE = """
import sys, threading
from pathlib import Path
{setup}
barrier = threading.Barrier(8)
errors = []
def go():
    barrier.wait()
    try:
        {call}
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=go) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(errors or "ok")
"""

CASES = {
    "agent_config": (
        "from kcd.config.agent import load_agent_config_text\n"
        f"path = {str(REPO / 'configs' / 'demo.yaml')!r}\ntext = Path(path).read_text()",
        "load_agent_config_text(text, path)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_conversions_in_eight_threads_at_once_do_not_crash(case):
    setup, call = CASES[case]
    for _ in range(10):  # unfixed: about one crash in two runs
        proc = subprocess.run([sys.executable, "-c", RACE.format(setup=setup, call=call)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
        assert proc.stdout.strip() == "ok", proc.stdout
