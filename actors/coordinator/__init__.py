"""The coordinator: TRINITY's semantics (what the routing logits mean and how a run proceeds).

Pure logic, testable without NATS:
  :mod:`.state_machine` (the loop, role policy, fallback, trace chain), :mod:`.verdict` (ACCEPT/REVISE
  rule), :mod:`.suggestions` (``<suggested_role>`` rule), :mod:`.budget` (turns, calls, tokens, cost,
  deadline), :mod:`.dedupe` (idempotent request ids), :mod:`.errors`.
Bus-facing: :mod:`.actor` (micro service on ``trinity.coord.request``), :mod:`.tracing` (non-blocking
JetStream trace publisher).

Role injection over the bus vs in-process (``CoordinatorSettings.role_inject_mode``): ``"bus"`` keeps role
packs in their own actor (upgrade/scale prompts without touching coordinators; every turn pays one more
round trip, about 0.5 ms per turn in ``scripts/bench_coordination.py``, and the run fails with
``role_inject_failed`` if no injector answers); ``"local"`` builds prompts in the coordinator's process with
a builder the node wiring passes in (this package never imports the role injector).
"""
