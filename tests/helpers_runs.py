"""Running a CLI command in a subprocess and killing it at a checkpoint, as a crash would."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def run_and_kill_at(cmd: list[str], env: dict[str, str], checkpoint: Path, poll_s: float = 0.01,
                    timeout_s: float = 300) -> None:
    """Start `cmd` and SIGKILL it as soon as `checkpoint` exists (the run must still be going then)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while not checkpoint.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(poll_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
