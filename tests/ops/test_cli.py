"""run.py submit, result and tail against a running node (real coordinator, role injector and trace sink;
fake runtime and agents) on a hermetic nats-server; bad flags; Ctrl-C during submit and resuming the wait."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest

import run
from bus import subjects
from bus.embedded import NatsServerProcess
from bus.jetstream import ensure_stream, jobs_stream_spec, results_stream_spec
from config.coordinator import CoordinatorSettings
from config.nats import NatsSettings
from config.node import NodeSettings
from config.settings import load_settings
from config.trace_sink import JsonlSettings, TraceSinkSettings
from ops.node import Node
from schemas import CoordinationResult, Role, StopReason
from schemas.fingerprint import sha256_text
from tests.coordinator.fakes import BusFakes, FakeWorld, plan_of, reply_by_role
from tests.e2e.procs import REPO
from tests.e2e.support import trace_of


async def _wait_started(started: list[str], n: int) -> None:
    for _ in range(400):
        if len(started) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"actors started: {started}")


async def test_submit_and_tail_against_a_running_node(fresh_nats_server: NatsServerProcess, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url = fresh_nats_server.url
    settings = msgspec.structs.replace(
        load_settings(environ={}),
        nats=NatsSettings(servers=[url], embedded="never"),
        node=NodeSettings(actors=["trace_sink", "role_injector", "coordinator"], node_id="cli"),
        coordinator=CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0),
        trace_sink=TraceSinkSettings(jsonl=JsonlSettings(path=str(tmp_path / "trace.jsonl"))),
    )
    started: list[str] = []

    async def on_started(name: str) -> None:
        started.append(name)

    fakes_nc = await nats.connect(url)
    world = FakeWorld(route_plan=plan_of([(3, Role.THINKER), (1, Role.WORKER), (2, Role.VERIFIER)]),
                      reply_plan=reply_by_role(worker="42", thinker="add the numbers", verifier="ACCEPT: correct"))
    fakes = BusFakes(fakes_nc, world)
    await fakes.start()
    node = Node(settings, on_started=on_started)
    await node.start()
    try:
        await _wait_started(started, 3)
        rc = await asyncio.to_thread(run.main, ["submit", "What is 17 + 25?", "--nats", url, "--request-id",
                                                "cli-1", "--json"])
        out = capsys.readouterr().out
        assert rc == 0
        res = msgspec.json.decode(out.strip().splitlines()[-1], type=CoordinationResult)
        assert (res.answer, res.stop_reason, len(res.turns)) == ("42", StopReason.ACCEPTED, 3)
        assert [t.assignment.agent_id for t in res.turns] == [3, 1, 2]

        rc = await asyncio.to_thread(run.main, ["submit", "Again?", "--nats", url, "--request-id", "cli-2"])
        text = capsys.readouterr().out
        assert rc == 0 and "stopped by accepted after 3 turn(s)" in text and "answer: 42" in text
        assert "as Thinker" in text and "verdict: ACCEPT" in text

        rc = await asyncio.to_thread(run.main, ["tail", "--nats", url, "--request-id", "cli-1", "--replay",
                                                "--until-finished"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert rc == 0
        kinds = [ln.split()[3] for ln in lines]
        assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
        assert kinds.count("route_decided") == 3 and "verdict_recorded" in kinds
        assert all(" cli-1 " in ln for ln in lines)

        rc = await asyncio.to_thread(run.main, ["tail", "--nats", url, "--kind", "run_finished", "--replay",
                                                "--idle", "0.5"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert rc == 0 and len(lines) == 2 and all("run_finished" in ln for ln in lines)

        # the trace sink stored every event of both runs, redacted (content hashed, not stored)
        path = tmp_path / "trace.jsonl"
        for _ in range(100):
            if path.exists() and sum(1 for _ in path.open()) >= 2 * len(kinds):
                break
            await asyncio.sleep(0.05)
        records = [json.loads(ln) for ln in path.open()]
        assert len(records) == 2 * len(kinds)
        assert "What is 17 + 25?" not in path.read_text()
    finally:
        await node.stop()
        await fakes.drain()
        await fakes_nc.close()


async def test_submit_without_coordinator_fails_with_a_clear_message(
        fresh_nats_server: NatsServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    # a server of its own: once any coordinator has created the job queue, a job waits there for one instead
    nats_server = fresh_nats_server
    rc = await asyncio.to_thread(run.main, ["submit", "hi", "--nats", nats_server.url, "--via", "request"])
    err = capsys.readouterr().err
    assert rc == 1 and "no actor is serving trinity.coord.request" in err
    rc = await asyncio.to_thread(run.main, ["submit", "hi", "--nats", nats_server.url])
    err = capsys.readouterr().err
    assert rc == 1 and "no coordinator has set up the job queue" in err


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["tail", "--until-finished", "--nats", "nats://127.0.0.1:1"]) == 2
    assert "--until-finished needs --request-id" in capsys.readouterr().err
    assert run.main(["submit", "x", "--set", "nosuch.field=1"]) == 2
    assert "unknown section 'nosuch'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        run.main(["node", "--bogus"])
    assert ei.value.code == 2


# --- bad input: one line naming the flag and the rule, exit 2, no traceback, before any connection ------------

#: (arguments, text the one line must contain). ``--nats`` points at a port nobody serves: validation must
#: happen before connecting (a connection attempt would fail with exit 1 instead).
BAD = [
    (["submit", ""], "QUESTION: must not be empty"),
    (["submit", "   "], "QUESTION: must not be empty"),
    (["submit", "x", "--max-turns", "0"], "--max-turns: must be a whole number of turns in 1..64"),
    (["submit", "x", "--max-turns", "65"], "--max-turns: must be a whole number of turns in 1..64"),
    (["submit", "x", "--max-turns", "two"], "--max-turns: must be a whole number"),
    (["submit", "x", "--deadline", "-1"], "--deadline: must be a number of seconds >= 0.001"),
    (["train", "--run-dir", "/nonexistent/t", "--generations", "0"], "--generations: must be >= 1, got 0"),
    (["train", "--run-dir", "/nonexistent/t", "--budget-usd", "-1"], "--budget-usd: must be >= 0 USD, got -1.0"),
    (["demo", "--per-family", "-1"], "--per-family: must be a whole number of questions >= 1, got '-1'"),
    (["demo", "--per-family", "0"], "--per-family: must be a whole number of questions >= 1, got '0'"),
    (["submit", "x", "--deadline", "nan"], "--deadline: must be a number of seconds"),
    (["submit", "x", "--agents", "a,b"], "--agents: must be comma-separated agent ids"),
    (["submit", "x", "--agents", "1,-2"], "--agents: must be comma-separated agent ids"),
    (["submit", "x", "--request-id", "a.b/c"], "--request-id: must be 1-128 characters of A-Z a-z 0-9 _ -"),
    (["submit", "x", "--request-id", "q" * 129], "--request-id: must be 1-128 characters"),
    (["submit", "x", "--adapter", "a b"], "--adapter: must be 1-128 characters"),
    (["submit", "--file", "/nonexistent/q.txt"], "--file: cannot read the question"),
    (["submit", "x", "--file", "/dev/null"], "QUESTION and --file: give the question one way"),
    (["submit", "--file", "/dev/null"], "--file: the question must not be empty"),
    (["submit"], "stdin: the question must not be empty"),
    (["submit", "x", "--set", "nosuch.field=1"], "unknown section 'nosuch'"),
    (["demo", "--max-turns", "0"], "--max-turns: must be a whole number of turns in 1..64"),
    (["demo", "--deadline", "0"], "--deadline: must be a number of seconds >= 0.001"),
    (["demo", "--question", ""], "--question: must not be empty"),
    (["node", "--actors", "a,b"], "--actors: must be comma-separated actors from trace_sink"),
    (["tail", "--idle", "0"], "--idle: must be a number of seconds > 0"),
    (["tail", "--idle", "soon"], "--idle: must be a number of seconds > 0"),
    (["tail", "--request-id", "x y"], "--request-id: must be 1-128 characters"),
    (["tail", "--kind", "bogus"], "--kind: unknown trace kinds ['bogus']"),
    (["tail", "--until-finished"], "--until-finished needs --request-id"),
    (["result"], "required: REQUEST_ID"),
    (["result", "q1", "--timeout", "-1"], "--timeout: must be a number of seconds >= 0"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_flag(argv: list[str], expected: str) -> None:
    proc = subprocess.run([sys.executable, "run.py", *argv, "--nats", "nats://127.0.0.1:1"], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"run.py {argv[0]}: ") and expected in lines[0], proc.stderr


# --- submit from a file and stdin; Ctrl-C and resuming the wait -------------------------------------------------

@contextlib.asynccontextmanager
async def _coordinator_with_fakes(url: str) -> AsyncIterator[None]:
    """A coordinator and role injector (real) with the scripted fake runtime and agents (Thinker, Worker "42",
    Verifier ACCEPT) on ``url``."""
    settings = msgspec.structs.replace(
        load_settings(environ={}), nats=NatsSettings(servers=[url], embedded="never"),
        node=NodeSettings(actors=["role_injector", "coordinator"], node_id="cli-fakes"),
        coordinator=CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0))
    started: list[str] = []

    async def on_started(name: str) -> None:
        started.append(name)

    fakes_nc = await nats.connect(url)
    world = FakeWorld(route_plan=plan_of([(3, Role.THINKER), (1, Role.WORKER), (2, Role.VERIFIER)]),
                      reply_plan=reply_by_role(worker="42", thinker="add the numbers", verifier="ACCEPT: correct"))
    fakes = BusFakes(fakes_nc, world)
    await fakes.start()
    node = Node(settings, on_started=on_started)
    await node.start()
    try:
        await _wait_started(started, 2)
        yield
    finally:
        await node.stop()
        await fakes.drain()
        await fakes_nc.close()


async def _run_py(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", *argv, cwd=REPO, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


LONG_QUESTION = "A long question, written in a file.\n" + "\n".join(f"Line {i}: some context." for i in range(400)) + (
    "\nWhat is 17 + 25?\n")


async def test_submit_reads_the_question_from_a_file_and_stdin(fresh_nats_server: NatsServerProcess,
                                                               tmp_path: Path) -> None:
    url = fresh_nats_server.url
    question = tmp_path / "question.txt"
    question.write_text(LONG_QUESTION)
    async with _coordinator_with_fakes(url):
        runs = {"cli-file": await _run_py("submit", "--file", str(question), "--nats", url, "--request-id",
                                          "cli-file", "--json"),
                "cli-dash": await _run_py("submit", "-", "--nats", url, "--request-id", "cli-dash", "--json",
                                          stdin=LONG_QUESTION.encode()),
                "cli-pipe": await _run_py("submit", "--nats", url, "--request-id", "cli-pipe",
                                          stdin=LONG_QUESTION.encode())}
        nc = await nats.connect(url)
        try:
            for rid, (rc, out, err) in runs.items():
                assert rc == 0, err
                assert err.splitlines()[0] == f"run.py submit: request id {rid}"  # the id comes first, on stderr
                if rid == "cli-pipe":
                    assert out.startswith(f"request {rid}: ok") and "answer: 42" in out
                else:  # --json: stdout is the result alone, pure JSON
                    res = msgspec.json.decode(out, type=CoordinationResult)
                    assert (res.request_id, res.answer, res.stop_reason) == (rid, "42", StopReason.ACCEPTED)
                started = [e for e in await trace_of(nc, rid) if e.kind == "run_started"]
                # the coordinator got the whole question (stripped of the file's trailing newline)
                assert [e.query_sha256 for e in started] == [sha256_text(LONG_QUESTION.strip())]  # type: ignore[union-attr]
        finally:
            await nc.close()


async def test_ctrl_c_prints_the_id_first_and_how_to_resume(fresh_nats_server: NatsServerProcess) -> None:
    url = fresh_nats_server.url
    nc = await nats.connect(url)
    js = nc.jetstream()
    # the work queue exists (a coordinator ran once) but no coordinator serves it now
    await ensure_stream(js, jobs_stream_spec())
    await ensure_stream(js, results_stream_spec())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "submit", "What is 17 + 25?", "--nats", url, "--deadline", "300", "--json",
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        first = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert first.startswith("run.py submit: request id q-")
        rid = first.split()[-1]
        for _ in range(600):  # until the job is stored on the work queue
            if (await js.stream_info(subjects.JOBS_STREAM)).state.messages == 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the job was never queued")
        proc.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(proc.stderr.read(), 60)).decode()
        assert await asyncio.wait_for(proc.wait(), 60) == 130
        assert await proc.stdout.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = rest.strip().splitlines()
    assert "Traceback" not in rest and len(lines) == 1, rest
    assert lines[0].startswith(f"run.py submit: interrupted; job {rid} stays queued")
    resume = lines[0].split("with: ", 1)[1]
    assert resume == f"run.py result {rid} --nats {url}"
    assert (await js.stream_info(subjects.JOBS_STREAM)).state.messages == 1  # still queued, not lost

    # nothing stored yet: a short wait says so, exit 1 (the job is still queued)
    rc, out, err = await _run_py(*shlex.split(resume)[1:], "--timeout", "0.5")
    assert rc == 1 and f"no stored result for job {rid} within 0.5s" in err and out == ""
    await nc.close()

    # a coordinator comes up, takes the queued job; the resume command prints its result
    async with _coordinator_with_fakes(url):
        rc, out, err = await _run_py(*shlex.split(resume)[1:], "--json")
    assert rc == 0, err
    res = msgspec.json.decode(out, type=CoordinationResult)
    assert (res.request_id, res.answer, res.stop_reason) == (rid, "42", StopReason.ACCEPTED)
    # and resubmitting the same id (idempotent) returns the one stored result at once
    rc, out, err = await _run_py("submit", "What is 17 + 25?", "--nats", url, "--request-id", rid, "--json")
    assert rc == 0 and msgspec.json.decode(out, type=CoordinationResult) == res


async def test_ctrl_c_before_the_job_is_queued_says_to_submit_again(tmp_path: Path) -> None:
    """A "server" that accepts connections and never answers: the interrupt comes while connecting, before the
    job was queued, so the hint is to submit it again."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    url = f"nats://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    question = tmp_path / "q.txt"
    question.write_text("What is 2 + 2?")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "submit", "--file", str(question), "--nats", url, "--set",
        "nats.connect_timeout_s=60", "--request-id", "cli-early",
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        first = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert first == "run.py submit: request id cli-early\n"
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(proc.stderr.read(), 60)).decode()
        assert await asyncio.wait_for(proc.wait(), 60) == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        silent.close()
    assert "Traceback" not in rest and len(rest.strip().splitlines()) == 1, rest
    assert rest.strip() == (
        "run.py submit: interrupted; job cli-early was not queued yet; submit it again (same id, idempotent) "
        f"with: run.py submit --request-id cli-early --nats {url} --set ... --file {question}")
