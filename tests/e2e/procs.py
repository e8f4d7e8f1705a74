"""Actors in processes of their own for the end-to-end tests: ``run.py node`` and the fake services,
started with their output in a log file, killed with SIGKILL (a crash) or stopped with SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    """One child process and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, marker: str, timeout: float = 60.0) -> None:
        """Wait until ``marker`` appears in the log (fails with the log when the process exits first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {marker!r} not seen within {timeout}s:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: the process dies at once, mid-whatever (no drain, no acks)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful drain), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn(name: str, args: list[str], log_dir: Path) -> Proc:
    """Start ``python args...`` in the repository root with its output in ``log_dir/name.log``."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    return Proc(name=name, proc=proc, log=log)


def node(name: str, urls: list[str], actors: str, log_dir: Path, *settings: str, config: Path | None = None) -> Proc:
    """``run.py node --actors ...`` on ``urls`` with ``--set`` overrides (and a ``--config`` file); ready once
    every actor serves."""
    args = ["run.py", "node", "--nats", ",".join(urls), "--actors", actors, "--node-id", name,
            "--set", "nats.embedded=never", "--log-level", "DEBUG"]
    if config is not None:
        args += ["--config", str(config)]
    for item in settings:
        args += ["--set", item]
    p = spawn(name, args, log_dir)
    for actor in actors.split(","):
        p.wait_for(f"actor {actor} serving")
    return p


def fakes(name: str, urls: list[str], log_dir: Path, *, serve: str = "runtime,agents", route_delay: float = 0.0,
          agent_delay: float = 0.0, extra: list[str] | None = None) -> Proc:
    """The fake runtime and/or agents (:mod:`tests.e2e.fake_services`) in their own process."""
    p = spawn(name, ["-m", "tests.e2e.fake_services", "--nats", ",".join(urls), "--serve", serve, "--name", name,
                     "--route-delay", str(route_delay), "--agent-delay", str(agent_delay), *(extra or [])], log_dir)
    p.wait_for("ready")
    return p
