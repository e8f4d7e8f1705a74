"""The ``trinity-nats`` command (the repository's ``run.py``; a built wheel installs ``run.py`` itself here)."""

from run import main

__all__ = ["main"]
