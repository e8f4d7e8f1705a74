"""The role injector: versioned role packs and the messages each agent sees for its role.

Pure: :mod:`.packs` (``trinity-default/2`` for small models, ``trinity-default/1``, and TOML/JSON packs, with
the protocol checks the coordinator relies on), :mod:`.builder` (system prompt, worked examples, user query,
earlier replies, closing instruction).
Bus-facing: :mod:`.actor` (micro service on ``trinity.role.inject``; :func:`.actor.local_injector` gives the
same in-process).
"""
