"""Secrets never leave a process (issue 14, deliverable 6), checked as an attacker who reads every place.

:func:`tests.e2e.attacks.secret_leaks`: a provider's ``base_url`` carries a password, a dead provider's another,
the question carries an AWS key id and a ``password=``, and the (real, loopback) provider echoes the password in
its answer. Then we read the reply, the stored result (raw bytes of the results stream), the raw trace stream
(what ``tail`` and every sink read), ``tail``'s output, the trace sink's JSONL, an error reply from the dead agent,
and every log line (httpx's request lines included, with ``run.py``'s log scrubber installed). None holds any of
the secrets, with and without per-actor permissions; the runs themselves still answer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import run
from ops.log_scrub import install_log_scrubber
from schemas import RunStatus
from tests.e2e import attacks
from tests.e2e.attacks import SECRETS, URL_PW, Lab


@pytest.mark.parametrize("secure", [True, False], ids=["per-actor-users", "open-server"])
async def test_no_secret_reaches_any_stored_published_or_logged_place(
        secure: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    scrubber = install_log_scrubber()  # what run.py does at start
    lab = Lab(secure=secure, tmp=tmp_path)
    try:
        report = await attacks.secret_leaks(lab)
    finally:
        await lab.close()
        for h in logging.getLogger().handlers:
            h.removeFilter(scrubber)
    res, job = report.request_result, report.job_result
    assert (res.status, job.status) == (RunStatus.OK, RunStatus.OK)
    assert res.answer is not None and res.answer.startswith("ACCEPT 42")
    failures = [f for t in res.turns for f in t.failures]
    assert failures and "cannot reach http://[REDACTED]@127.0.0.1" in failures[0].message  # named, password gone
    assert "[REDACTED]" in report.places["error reply"]
    assert report.places["trace stream"].count("\n") >= 11 and report.places["jsonl"].count('"run_finished"') == 2
    assert all(report.places.values()), [k for k, v in report.places.items() if not v]
    assert "HTTP Request: POST http://[REDACTED]@" in caplog.text  # httpx's INFO line, scrubbed
    report.places["logs"] = caplog.text
    leaks = sorted(f"{where}: {s}" for where, text in report.places.items() for s in SECRETS if s in text)
    assert leaks == [] and report.outcome.succeeded == 0


def test_a_nats_url_with_credentials_is_never_printed(capfd: pytest.CaptureFixture[str]) -> None:
    """``--nats nats://user:pass@...`` on a command line: the connect error names the server, not the password."""
    port = attacks._closed_port()
    rc = run.main(["status", "--nats", f"nats://ops:{URL_PW}@127.0.0.1:{port}", "--set", 'nats.embedded="never"',
                   "--set", "nats.connect_timeout_s=0.2", "--log-level", "DEBUG"])
    out = capfd.readouterr()
    assert rc != 0
    assert f"127.0.0.1:{port}" in out.err and URL_PW not in out.out + out.err
