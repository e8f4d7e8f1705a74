"""What the acceptance tests share: the processes a user starts, their logs, the JSONL trace, and a look at
what is still running afterwards.

Every process is started with ``TRINITY_ACCEPTANCE_MARK`` set to a fresh token in its environment, which
its children inherit: after a stop, any live process carrying the token is something left running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ANCHORS = REPO.parent / "shared" / "anchors"
MARK_VAR = "TRINITY_ACCEPTANCE_MARK"
TERMINAL_KINDS = ("run_finished", "run_failed")


def new_mark() -> str:
    """A token that tags every process one test starts."""
    return f"acc-{uuid.uuid4().hex[:12]}"


def env_with(mark: str, **extra: str) -> dict[str, str]:
    """The environment of a user's shell plus the test's mark (provider keys removed: the default node is the
    offline one)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRINITY", "OPENAI_", "ANTHROPIC_", "GEMINI_", "NATS_URL"))}
    env[MARK_VAR] = mark
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class UserProcess:
    """A command a user ran, with everything it printed in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    def text(self) -> str:
        """Everything printed so far (stdout and stderr together)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears; fail with the log if the process exits first."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.text())
            if m is not None:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}) before {pattern!r}:\n"
                                     f"{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {pattern!r} not seen in {timeout:.0f}s:\n{self.text()[-4000:]}")
            time.sleep(0.2)

    def wait_exit(self, timeout: float) -> int:
        """The exit status (killed, and the test failed, past ``timeout``: a hang guard)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not exit within {timeout:.0f}s:\n{self.text()[-4000:]}") from None

    def kill(self) -> None:
        """SIGKILL (cleanup only)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start(name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> UserProcess:
    """``python args...`` from the repository root, as a user types it."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return UserProcess(name=name, proc=proc, log=log)


def interrupt(p: UserProcess) -> float:
    """Ctrl-C (SIGINT) to the process; returns when it was sent (monotonic)."""
    t = time.monotonic()
    p.proc.send_signal(signal.SIGINT)
    return t


def marked_processes(mark: str) -> list[tuple[int, str]]:
    """Live processes whose environment carries ``mark`` (pid, command line)."""
    found: list[tuple[int, str]] = []
    needle = f"{MARK_VAR}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":  # a zombie burns nothing
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        found.append((int(entry.name), cmd))
    return found


def wait_nothing_left(mark: str, timeout: float = 10.0) -> list[tuple[int, str]]:
    """What is still running with ``mark`` after ``timeout`` seconds (empty when everything ended)."""
    deadline = time.monotonic() + timeout
    while True:
        left = marked_processes(mark)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def read_jsonl(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The stored trace events per request id, from the JSONL file and its rotations."""
    by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in sorted(path.parent.glob(path.name + "*")):
        for line in p.read_text().splitlines():
            if line.strip():
                event = json.loads(line)["event"]
                by_request[event["request_id"]].append(event)
    return by_request


def wait_trace(path: Path, request_id: str, kind: str, timeout: float) -> None:
    """Wait until the JSONL trace holds a ``kind`` event of ``request_id`` (a hang guard bounds it)."""
    deadline = time.monotonic() + timeout
    while not any(e["kind"] == kind for e in read_jsonl(path).get(request_id, [])):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {kind} event of {request_id} in {path} within {timeout:.0f}s")
        time.sleep(0.5)


def trace_gaps(events: list[dict[str, Any]], turns: int) -> list[str]:
    """What is missing from one request's stored trace for a run of ``turns`` turns (empty when complete)."""
    kinds = [e["kind"] for e in events]
    gaps = []
    if "run_started" not in kinds:
        gaps.append("run_started")
    terminal = [e for e in events if e["kind"] in TERMINAL_KINDS]
    if not terminal:
        gaps.append("run_finished/run_failed")
    elif terminal[-1]["kind"] == "run_finished" and terminal[-1]["turns"] != turns:
        gaps.append(f"run_finished says {terminal[-1]['turns']} turns, the result has {turns}")
    routed = sorted({e["turn"] for e in events if e["kind"] == "route_decided"})
    if routed != list(range(turns)):
        gaps.append(f"route_decided for turns 0..{turns - 1} (found {routed})")
    finished = {e["turn"] for e in events if e["kind"] in ("agent_call_finished", "agent_call_failed")}
    missing = [t for t in range(turns) if t not in finished]
    if missing:
        gaps.append(f"agent call outcome for turns {missing}")
    return gaps
