"""The fleet registry: which runtimes are alive, what they hold warm, and where a route should go.

Pure modules (:mod:`.state`, :mod:`.leases`, :mod:`.placement`) plus a thin bus actor (:mod:`.actor`).
"""
