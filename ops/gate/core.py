"""Run the decision-stability gate, or record a snapshot, over any router.

A *router* is a callable ``messages -> RouteLogits`` (the in-process engine of :mod:`ops.gate.router`, or a
replay in tests). For each case the gate re-routes the transcript, interprets the logits with
:func:`schemas.routing.decide`, and compares:

* **decision** (agent, role) with the snapshot's: a change is a *flip* (fails the gate);
* **margins** (winner minus runner-up, per group) with the profile's floors: a margin under its floor is
  a *breach* (fails the gate);
* **route hash** with the snapshot's: a different hash with the same decision is *hash drift* (logits moved
  in the 6th decimal or beyond; reported, never fails the gate);
* **token count** with the snapshot's (a different tokenizer; reported).

The cases' ``expected`` labels are compared with the snapshot's decisions too (they agree for fixtures the
gate recorded and for the anchors); disagreement is reported as a fixture inconsistency.

Example::

    report = run_gate(load_cases(c), load_snapshot(s), router)
    print(report.render()); sys.exit(0 if report.passed else 1)
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from ops.gate.errors import FixtureError
from ops.gate.fixtures import EvalCase, EvalCases, Expected, Snapshot, SnapshotCase
from schemas.common import Message
from schemas.routing import RouteLogits, decide, rounded_logits
from schemas.sakana import RuntimeProfile

Router = Callable[[list[Message]], RouteLogits]
Progress = Callable[[str], None]

#: Floors of a recorded profile are this fraction of the smallest recorded margin (as the CUDA lane's were).
DEFAULT_FLOOR_FRACTION = 0.8
ROLE_NAMES = ("worker", "thinker", "verifier")


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One case re-routed and compared."""

    id: str
    reference: tuple[int, int]
    got: tuple[int, int]
    expected: tuple[int, int]
    agent_margin: float
    role_margin: float
    agent_floor: float
    role_floor: float
    route_hash: str
    reference_hash: str
    max_logit_drift: float
    token_count: int
    reference_token_count: int

    @property
    def stable(self) -> bool:
        """The decision equals the snapshot's."""
        return self.got == self.reference

    @property
    def agent_breach(self) -> bool:
        """The agent margin fell under its floor."""
        return self.agent_margin < self.agent_floor

    @property
    def role_breach(self) -> bool:
        """The role margin fell under its floor."""
        return self.role_margin < self.role_floor

    @property
    def hash_drift(self) -> bool:
        """The route hash differs from the snapshot's."""
        return self.route_hash != self.reference_hash

    @property
    def passed(self) -> bool:
        """Stable and both margins at or above their floors."""
        return self.stable and not self.agent_breach and not self.role_breach


@dataclass(frozen=True, slots=True)
class GateReport:
    """All case results, the profile whose floors applied, and timing."""

    results: tuple[CaseResult, ...]
    profile: RuntimeProfile
    elapsed_s: float
    notes: tuple[str, ...] = field(default=())
    routing_profile: str = "elixir-port"

    @property
    def total(self) -> int:
        """Number of cases."""
        return len(self.results)

    @property
    def stable(self) -> int:
        """Cases whose decision did not flip."""
        return sum(r.stable for r in self.results)

    @property
    def breaches(self) -> int:
        """Cases with a margin under its floor."""
        return sum(r.agent_breach or r.role_breach for r in self.results)

    @property
    def hash_drift(self) -> int:
        """Cases whose route hash changed."""
        return sum(r.hash_drift for r in self.results)

    @property
    def passed(self) -> bool:
        """No flip and no floor breach."""
        return all(r.passed for r in self.results)

    def render(self, *, verbose: bool = False) -> str:
        """Human-readable report: one line per failing case (every case with ``verbose``), then totals."""
        lines = [f"routing profile {self.routing_profile}; profile {self.profile.name}: "
                 f"floors agent {self.profile.agent_margin_floor:.4f}, "
                 f"role {self.profile.role_margin_floor:.4f}"]
        for r in self.results:
            if not verbose and r.passed and not r.hash_drift:
                continue
            marks = []
            if not r.stable:
                marks.append(f"FLIP {_decision(r.reference)} -> {_decision(r.got)}")
            if r.agent_breach:
                marks.append(f"agent margin {r.agent_margin:.4f} < floor {r.agent_floor:.4f}")
            if r.role_breach:
                marks.append(f"role margin {r.role_margin:.4f} < floor {r.role_floor:.4f}")
            if r.hash_drift:
                marks.append(f"hash drift (max logit drift {r.max_logit_drift:.2e})")
            if r.token_count != r.reference_token_count:
                marks.append(f"token count {r.token_count} != {r.reference_token_count}")
            status = "FAIL" if not r.passed else "ok  "
            lines.append(f"{status} {r.id:<32} {_decision(r.got):<14} agent {r.agent_margin:8.4f} "
                         f"role {r.role_margin:8.4f}" + (f"  [{'; '.join(marks)}]" if marks else ""))
        min_agent = min(r.agent_margin for r in self.results)
        min_role = min(r.role_margin for r in self.results)
        worst_agent = min(self.results, key=lambda r: r.agent_margin).id
        worst_role = min(self.results, key=lambda r: r.role_margin).id
        lines += [
            f"decisions stable: {self.stable}/{self.total}",
            f"margins above floors: {self.total - self.breaches}/{self.total} (smallest agent {min_agent:.4f} on "
            f"{worst_agent}, smallest role {min_role:.4f} on {worst_role})",
            f"route hashes unchanged: {self.total - self.hash_drift}/{self.total} (hash drift without a flip "
            f"is reported, not failed)",
            *self.notes,
            f"gate {'PASSED' if self.passed else 'FAILED'} in {self.elapsed_s:.1f}s",
        ]
        return "\n".join(lines)


def _decision(d: tuple[int, int]) -> str:
    return f"agent {d[0]} {ROLE_NAMES[d[1]] if 0 <= d[1] < 3 else d[1]}"


def _drift(logits: RouteLogits, ref: SnapshotCase) -> float:
    got = rounded_logits(logits.logits)
    want = [*ref.agent_logits_rounded, *ref.role_logits_rounded]
    if len(got) != len(want):
        return float("inf")
    return max(abs(a - b) for a, b in zip(got, want, strict=True))


def run_gate(cases: EvalCases, snapshot: Snapshot, router: Router, *, profile: RuntimeProfile | None = None,
             progress: Progress | None = None) -> GateReport:
    """Re-route every case and compare with the snapshot (see module docs).

    ``profile`` overrides the snapshot's own profile; without either, ``RuntimeProfile()`` (the CUDA
    reference floors) applies.

    Raises:
        FixtureError: the snapshot lacks cases of the cases file (or has others).
    """
    ref = snapshot.by_id()
    ids = [c.id for c in cases.cases]
    missing = [i for i in ids if i not in ref]
    extra = sorted(set(ref) - set(ids))
    if missing or extra:
        raise FixtureError(f"cases and snapshot differ: missing from the snapshot {missing}, only in the snapshot "
                           f"{extra}; record a snapshot for these cases with --record")
    prof = profile or snapshot.profile or RuntimeProfile()
    notes: list[str] = []
    inconsistent = [c.id for c in cases.cases
                    if (c.expected.agent_id, c.expected.role_id) != (ref[c.id].agent_id, ref[c.id].role_id)]
    if inconsistent:
        notes.append(f"fixture note: expected labels differ from the snapshot's decisions on {len(inconsistent)} "
                     f"case(s): {', '.join(inconsistent[:8])}{' ...' if len(inconsistent) > 8 else ''}")
    start = time.perf_counter()
    results = []
    routing = snapshot.routing_profile or "elixir-port"
    for i, case in enumerate(cases.cases):
        if progress is not None:
            progress(f"[{i + 1}/{len(cases.cases)}] {case.id}")
        logits = router(list(case.messages))
        if logits.routing_profile != routing:
            raise FixtureError(f"the snapshot was recorded under routing profile {routing!r} but the router runs "
                               f"{logits.routing_profile!r}; pass --routing-profile {routing} or use that "
                               "profile's fixture")
        d = decide(logits, prof)
        r = ref[case.id]
        results.append(CaseResult(
            id=case.id, reference=(r.agent_id, r.role_id), got=(d.agent_id, int(d.role)),
            expected=(case.expected.agent_id, case.expected.role_id), agent_margin=d.agent_margin,
            role_margin=d.role_margin, agent_floor=prof.agent_margin_floor, role_floor=prof.role_margin_floor,
            route_hash=d.route_hash, reference_hash=r.route_hash, max_logit_drift=_drift(logits, r),
            token_count=logits.token_count, reference_token_count=r.token_count))
    drifted = sum(r.hash_drift for r in results)
    if drifted and prof.dtype == "bfloat16" and prof.device.startswith("cpu"):
        notes.append(f"note: {drifted} route hash(es) drifted on a bfloat16 CPU lane. bf16 on a CPU depends on the "
                     "kernel path (oneDNN's native bf16 where the CPU has AVX512-BF16, another path elsewhere), so "
                     "a fixture recorded on another CPU drifts and small margins may flip; record one on this "
                     "machine with --record")
    return GateReport(tuple(results), prof, time.perf_counter() - start, tuple(notes), routing)


def floors_from_margins(cases: Sequence[SnapshotCase], fraction: float = DEFAULT_FLOOR_FRACTION) -> tuple[float, float]:
    """``fraction`` of the smallest agent and role margins, rounded down to 4 decimals."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"floor fraction must be in (0, 1], got {fraction}")

    def floor(values: list[float]) -> float:
        return float(int(min(values) * fraction * 10_000) / 10_000)

    return floor([c.agent_margin for c in cases]), floor([c.role_margin for c in cases])


def record_snapshot(cases: EvalCases, router: Router, *, profile: RuntimeProfile,
                    floor_fraction: float = DEFAULT_FLOOR_FRACTION, source: dict[str, str] | None = None,
                    progress: Progress | None = None) -> Snapshot:
    """Route every case and write down decisions, rounded logits, margins and hashes.

    The snapshot's profile keeps ``profile``'s name/backend/device/dtype; its floors are ``floor_fraction``
    of the smallest recorded margins.
    """
    out = []
    routing: set[str] = set()
    for i, case in enumerate(cases.cases):
        if progress is not None:
            progress(f"[{i + 1}/{len(cases.cases)}] {case.id}")
        logits = router(list(case.messages))
        routing.add(logits.routing_profile)
        d = decide(logits, profile)
        out.append(SnapshotCase(
            id=case.id, agent_id=d.agent_id, role_id=int(d.role),
            agent_logits_rounded=rounded_logits(logits.agent_logits),
            role_logits_rounded=rounded_logits(logits.role_logits), agent_margin=d.agent_margin,
            role_margin=d.role_margin, route_hash=d.route_hash, token_count=logits.token_count,
            transcript_hash=logits.transcript_hash))
    agent_floor, role_floor = floors_from_margins(out, floor_fraction)
    prof = msgspec.structs.replace(profile, agent_margin_floor=agent_floor, role_margin_floor=role_floor)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if len(routing) > 1:
        raise FixtureError(f"the router answered under several routing profiles: {sorted(routing)}")
    return Snapshot(cases=out, generated_at=now, schema_version=1, profile=prof, source=source,
                    routing_profile=routing.pop() if routing else None)


def relabel(cases: EvalCases, snapshot: Snapshot) -> EvalCases:
    """The cases with ``expected`` set to the snapshot's decisions (a fixture set for a new profile)."""
    ref = snapshot.by_id()
    new = [msgspec.structs.replace(c, expected=Expected(ref[c.id].agent_id, ref[c.id].role_id))
           for c in cases.cases]
    return msgspec.structs.replace(cases, cases=new)


__all__ = ["CaseResult", "EvalCase", "GateReport", "floors_from_margins", "record_snapshot", "relabel", "run_gate"]
