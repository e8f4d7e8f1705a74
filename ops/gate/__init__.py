"""The decision-stability gate: re-route reference transcripts and check decisions, margins and hashes.

* :mod:`.fixtures` — the eval cases file (``{id, messages, expected, tags, notes}``) and the logits snapshot
  (``qwen_router_prompt_eval_logits.json`` format, plus an optional runtime ``profile`` with margin floors);
* :mod:`.core` — :func:`~.core.run_gate` and :func:`~.core.record_snapshot` over any router callable;
* :mod:`.router` — an in-process router on the model runtime engine (checkpoint, head or TRINITY vector with
  its SVF adapter);
* :mod:`.errors` — one exception per failure kind.
"""
