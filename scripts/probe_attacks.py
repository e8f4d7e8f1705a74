"""Re-run issue 14's attacks against real nats-servers and print what got through, with protections and without.

Two runs of the same attack code (``tests/e2e/attacks.py``), each on its own nats-server on loopback with the
system running (scripted fake runtime and agents, real role injector, coordinator and trace sink):

- **protected**: the per-actor users and permissions of ``run.py nats-auth`` (private inboxes, queue-group-only
  request subjects, JetStream API by owner, tenants, node status per node, per-host ``agents-<name>`` and
  ``runtime-<id>`` users) and the secret scrubber;
- **control**: an open server (anonymous connections, nats-py's shared ``_INBOX``) and the scrubber's patterns
  switched off (configured secret values are still redacted by the trace sink), which shows each attack working.

Usage::

    python scripts/probe_attacks.py            # prints a table; exit 1 if anything got through the protections
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import schemas.redaction
from ops.log_scrub import install_log_scrubber
from tests.e2e import attacks
from tests.e2e.attacks import SECRETS, Lab, Outcome


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def _run(secure: bool, tmp: Path) -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    lab = Lab(secure, tmp / "a")
    try:
        out["hijack"] = await attacks.ack_hijack(lab, "provider_agents", jobs=4)
        out["api"] = await attacks.js_abuse(lab)
    finally:
        await lab.close()
    lab = Lab(secure, tmp / "b")
    try:
        client = await lab.start_system()
        snoops = [await attacks.snoop(lab, client, who) for who in ("provider_agents", "model_runtime", "client")]
        out["snoop"] = Outcome("inbox snooping", sum(o.attempts for o in snoops), sum(o.succeeded for o in snoops),
                               sum(o.seen for o in snoops))
        out["forge_agents"] = await attacks.forge_agents(lab, client)
        out["forge_routes"] = await attacks.forge_routes(lab, client)
        out["host_agents"] = await attacks.forge_other_hosts_agents(lab, client)
        out["runtimes"] = await attacks.forge_other_runtimes(lab)
        out["others_results"] = await attacks.read_others_results(lab, client)
        out["status"] = await attacks.forge_status(lab, client)
    finally:
        await lab.close()
    lab = Lab(secure, tmp / "c")
    root = logging.getLogger()
    capture = _Capture()
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    scrubber = install_log_scrubber() if secure else None
    saved = schemas.redaction._COMPILED
    if not secure:
        schemas.redaction._COMPILED = ()  # the control: no secret patterns anywhere but the sink's own
    try:
        report = await attacks.secret_leaks(lab)
    finally:
        schemas.redaction._COMPILED = saved
        await lab.close()
        root.removeHandler(capture)
        if scrubber is not None:
            for h in root.handlers:
                h.removeFilter(scrubber)
    logs = "\n".join(capture.lines)
    report.outcome.attempts += len(SECRETS)
    report.outcome.notes += [f"logs: {s}" for s in SECRETS if s in logs]
    report.outcome.succeeded = len(report.outcome.notes)
    out["secrets"] = report.outcome
    return out


ROWS = [
    ("forged agent answers (runs answered by the forger)", "forge_agents"),
    ("forged route logits (runs routed by the forger)", "forge_routes"),
    ("another host's agents (agents-a; runs it answered)", "host_agents"),
    ("another runtime's heartbeat/route (runtime-r1; taken)", "runtimes"),
    ("hijacked jobs (+TERM on deliveries, of 4 queued)", "hijack"),
    ("reply-inbox snooping (subscriptions that read anything)", "snoop"),
    ("JetStream API abuse (purge/delete/redefine not owned)", "api"),
    ("a tenant reading another's results (reads that worked)", "others_results"),
    ("node status forgery (forged readiness answers)", "status"),
    ("secret leaks ((place, secret) pairs found)", "secrets"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--verbose", action="store_true", help="print what got through in the control")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for h in logging.getLogger().handlers:
        h.setLevel(logging.WARNING)  # the INFO lines are captured for the leak count, not shown
    with tempfile.TemporaryDirectory() as d:
        protected = asyncio.run(_run(True, Path(d) / "protected"))
        control = asyncio.run(_run(False, Path(d) / "control"))
    print(f"{'attack':58} {'protected':>16} {'control (open)':>16}")
    for label, key in ROWS:
        p_, c = protected[key], control[key]
        print(f"{label:58} {f'{p_.succeeded}/{p_.attempts}':>16} {f'{c.succeeded}/{c.attempts}':>16}")
    api = protected["api"]
    print(f"\nJetStream API abuse refused: {api.refused}/{api.attempts}; forged answers: "
          f"{sum(protected[k].succeeded for k in ('forge_agents', 'forge_routes', 'host_agents', 'runtimes'))}; "
          f"hijacked jobs: "
          f"{protected['hijack'].succeeded}; secret leaks: {protected['secrets'].succeeded}")
    print(f"reply-inbox snoopers read {protected['snoop'].seen} messages protected, "
          f"{control['snoop'].seen} in the control")
    if args.verbose:
        for key in ("api", "runtimes", "secrets"):
            print(f"control {key}: " + "; ".join(control[key].notes))
    return 1 if any(o.succeeded for o in protected.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
