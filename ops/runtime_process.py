"""Model runtimes as separate OS processes (``run.py node --actors model_runtime``): start, kill, freeze.

A runtime process has its own NATS connection and nothing else in common with its caller, exactly as on
another host; tests and ``scripts/bench_fleet.py`` use this to run a fleet on one machine.

Example:
    >>> p = RuntimeProcess.start("rt-1", "nats://127.0.0.1:4222", {"model_runtime.checkpoint_preset":
    ...                          "qwen3-tiny-synthetic"}, log_path=Path("/tmp/rt-1.log"))  # doctest: +SKIP
    >>> p.stop()                                                                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RuntimeProcess:
    """One ``run.py node`` process running only the model runtime actor."""

    runtime_id: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    @classmethod
    def start(cls, runtime_id: str, nats_url: str | list[str], settings: dict[str, Any], *, log_path: Path,
              python: str = sys.executable, env: Mapping[str, str] | None = None) -> RuntimeProcess:
        """Launch a runtime process; ``settings`` are ``section.field -> value`` overrides (JSON-encoded, they
        take precedence over the environment); ``env`` replaces the inherited environment when given."""
        urls = nats_url if isinstance(nats_url, str) else ",".join(nats_url)
        cmd = [python, str(ROOT / "run.py"), "node", "--actors", "model_runtime", "--node-id", runtime_id,
               "--nats", urls, "--set", 'nats.embedded="never"',
               "--set", f"model_runtime.runtime_id={json.dumps(runtime_id)}"]
        for key, value in settings.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        log = log_path.open("wb")
        popen = subprocess.Popen(cmd, cwd=ROOT, env=None if env is None else dict(env), stdout=log,
                                 stderr=subprocess.STDOUT)
        return cls(runtime_id, popen, log_path, log)

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies mid-request, no drain, no last heartbeat."""
        if self.alive:
            self.popen.kill()
        self.popen.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the process freezes (stops heartbeating and answering) without dying."""
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.popen.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout`` seconds."""
        if self.alive:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()

    def log_tail(self, n: int = 3000) -> str:
        """The end of the process's output (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
