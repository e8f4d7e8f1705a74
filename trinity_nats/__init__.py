"""TRINITY over NATS, as installed: ``trinity_nats`` is the one top-level name a user's environment gets.

For Python users the public API is :mod:`trinity_nats.client` (submit, wait, resubmit, typed trace events).
In the repository the design card's folders (``actors/``, ``bus/``, ``config/``, ...) stay top-level; a built
wheel installs them as ``trinity_nats.actors``, ``trinity_nats.bus``, ... (see ``setup.py``), so they never
shadow, or are shadowed by, a user's own ``config.py`` or ``bus`` package.
"""

__version__ = "0.1.0"
