"""A real ``run.py node`` process: it says when it is ready (one log line, ``run.py status --wait-ready``), and
it exits within ``node.drain_timeout_s`` of SIGINT even when an actor ignores its drain and a thread never
ends, naming what it left behind; a second SIGINT exits at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from bus.embedded import NatsServerProcess
from tests.e2e.procs import REPO, Proc, spawn

DRAIN_S = 3.0
MARGIN_S = 5.0  # process start-up of the interpreter is not part of it; exit and log flushing are


def _stuck_node(url: str, tmp_path: Path, node_id: str, drain_s: float) -> Proc:
    args = ["-m", "tests.e2e.stuck_node", "--nats", url, "--actors", "trace_sink,coordinator,stuck",
            "--node-id", node_id, "--set", "nats.embedded=never", "--set", f"node.drain_timeout_s={drain_s}",
            "--set", f'trace_sink.jsonl.path="{tmp_path / "trace.jsonl"}"',
            "--set", f'node.ready_file="{tmp_path / "ready.json"}"']
    return spawn(node_id, args, tmp_path)


def _status(url: str, node_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "run.py", "status", "--nats", url, "--node-id", node_id, *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def _wait_exit(p: Proc, guard_s: float = 120.0) -> float:
    t = time.monotonic()
    p.proc.wait(guard_s)
    return time.monotonic() - t


def test_node_reports_ready_then_exits_within_drain_timeout_naming_the_stuck_actor(
        fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    url = fresh_nats_server.url
    assert _status(url, "exit-1").returncode == 1  # nobody answers yet
    p = _stuck_node(url, tmp_path, "exit-1", DRAIN_S)
    try:
        waited = _status(url, "exit-1", "--wait-ready", "--timeout", "90")
        assert waited.returncode == 0, waited.stdout + waited.stderr + p.text()
        assert "node exit-1: ready" in waited.stdout and "stuck serving" in waited.stdout
        ready_lines = [line for line in p.text().splitlines() if "node exit-1 ready:" in line]
        assert len(ready_lines) == 1 and "trace_sink, coordinator, stuck serving" in ready_lines[0]
        assert (tmp_path / "ready.json").is_file()
        p.proc.send_signal(signal.SIGINT)
        took = _wait_exit(p)
    finally:
        p.kill()
    log = p.text()
    assert took < DRAIN_S + MARGIN_S, log
    assert "draining node-exit-1: waiting for" in log
    assert "actor stuck did not finish draining" in log, log
    left = [line for line in log.splitlines() if "exiting without waiting for" in line]
    assert len(left) == 1 and "stuck-worker" in left[0], log
    # the other actors drained after the stuck one was abandoned, and the ready file is gone
    assert "actor coordinator draining" in log and "actor trace_sink draining" in log
    assert p.proc.returncode == 0, log
    assert not (tmp_path / "ready.json").exists()


def test_second_sigint_exits_at_once(fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    p = _stuck_node(fresh_nats_server.url, tmp_path, "exit-2", 60.0)
    try:
        p.wait_for("node exit-2 ready:", timeout=90)
        p.proc.send_signal(signal.SIGINT)
        p.wait_for("draining node-exit-2: waiting for", timeout=30)
        p.proc.send_signal(signal.SIGINT)
        took = _wait_exit(p)
    finally:
        p.kill()
    assert took < 60.0, p.text()  # far inside the 60 s drain deadline
    assert p.proc.returncode == 128 + signal.SIGINT, p.text()
    assert "SIGINT again while draining node-exit-2; exiting now" in p.text()
