"""Training a TRINITY router: sep-CMA-ES over a vector layout, fitness from coordination episodes.

* :mod:`.layout` — what the optimized vector holds (the head, optionally SVF offsets; presets ``head-only`` and
  ``sakana``) and how it maps to a head matrix or a TRINITY vector.
* :mod:`.fitness` — task reward plus the Sakana config's bonus terms (diversity entropy, turn penalty).
* :mod:`.episodes` — in-process evaluation: real coordination runs (:class:`actors.coordinator.state_machine.Run`)
  with memoized agent replies and memoized backbone hidden states.
* :mod:`.trainer` — the optimizer loop (``cmaes.SepCMA``), per-generation checkpoint and resume, plot, export.
"""
