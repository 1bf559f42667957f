"""The verifier registry as a leaf: task families register into it, and it finds them by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _fresh(code: str) -> str:
    """stdout of `code` in a fresh interpreter that sees this checkout's r1lab."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_importing_verify_does_not_import_the_task_families_but_finds_them_on_use():
    out = _fresh(
        "import sys\n"
        "from r1lab.verify import known_tasks, verify_batch\n"
        "from r1lab.records import Problem\n"
        "print('r1lab.tasks' in sys.modules, known_tasks())\n"
        "p = Problem('c', 'Use 3, 5, 7 to make 22.', '22', task='countdown', metadata={'numbers': [3, 5, 7]})\n"
        "print([v.status for v in verify_batch([p, p], ['<answer>3 * 5 + 7</answer>', '<answer>3 + 5 + 7</answer>'],"
        " workers=0)])\n"
        "print('r1lab.tasks' in sys.modules, 'countdown' in known_tasks())\n")
    assert out.splitlines() == ["False ['code', 'judge', 'math']", "['correct', 'wrong']", "True True"]


def test_workers_find_task_family_verifiers_and_boot_from_the_pool_module():
    out = _fresh(
        "from r1lab.verify import shutdown_workers, verify_batch\n"
        "from r1lab.verify.pool import _BOOT\n"
        "from r1lab.records import Problem\n"
        "p = Problem('c', 'Use 3, 5, 7 to make 22.', '22', task='countdown', metadata={'numbers': [3, 5, 7]})\n"
        "print([v.status for v in verify_batch([p], ['<answer>3 * 5 + 7</answer>'], timeout=30, workers=1)])\n"
        "print('r1lab.verify.pool import _worker_main' in _BOOT)\n"
        "shutdown_workers()\n")
    assert out.splitlines() == ["['correct']", "True"]
