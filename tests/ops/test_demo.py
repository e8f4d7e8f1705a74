"""The main job (``run.py demo``) end to end: every actor under one node, the real local SmolLM2 agents, a
tiny synthetic router (the real TRINITY head fits only the 1024-wide backbone, so it gets a head file of
its own), one question through the durable work queue."""

from __future__ import annotations

import io
import re
from pathlib import Path

import msgspec
import nats
import numpy as np
import pytest

from bus import subjects
from bus.codec import decode
from bus.embedded import NatsServerProcess
from config.coordinator import CoordinatorSettings
from config.model_runtime import ModelRuntimeSettings
from config.nats import NatsSettings
from config.node import ALL_ACTORS, NodeSettings
from config.settings import load_settings
from config.trace_sink import JsonlSettings, TraceSinkSettings
from ops.demo import run_demo
from schemas import CoordinationResult

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_demo_answers_a_question_through_the_work_queue(fresh_nats_server: NatsServerProcess,
                                                              tmp_path: Path) -> None:
    url = fresh_nats_server.url
    head = tmp_path / "head.npy"
    np.save(head, np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32))
    settings = msgspec.structs.replace(
        load_settings(environ={}),
        nats=NatsSettings(servers=[url], embedded="never"),
        node=NodeSettings(actors=list(ALL_ACTORS), node_id="demo-test"),
        model_runtime=ModelRuntimeSettings(checkpoint_preset="qwen3-tiny-synthetic", head_path=str(head),
                                            num_threads=1),
        coordinator=CoordinatorSettings(agent_timeout_s=300.0),
        trace_sink=TraceSinkSettings(jsonl=JsonlSettings(path=str(tmp_path / "trace.jsonl"))),
    )
    out = io.StringIO()
    failed = await run_demo(settings, ["What is 17 + 25?"], repo_root=REPO, out=out, startup_timeout=600.0,
                            max_turns=2, deadline_s=300.0, trained=False)
    text = out.getvalue()
    assert failed == 0, text
    for actor in ALL_ACTORS:
        assert f"actor ready: {actor}" in text
    assert f"the head from {head}" in text
    assert "synthetic random-weight qwen3-tiny-synthetic backbone" in text
    assert "> What is 17 + 25?" in text
    turns = re.findall(r"turn (\d): agent \d .* as (Worker|Thinker|Verifier)", text)
    assert [t for t, _ in turns] == ["0", "1"][: len(turns)] and turns, text
    assert "reply: " in text
    rid = re.search(r"request (q-[0-9a-f]+):", text)
    assert rid is not None, text
    # the question went through the durable work queue: its one result is stored on the results stream
    nc = await nats.connect(url)
    try:
        msg = await nc.jetstream().get_last_msg(subjects.RESULTS_STREAM, subjects.coord_result(rid.group(1)))
        stored = decode(msg.data, CoordinationResult)
        assert stored.request_id == rid.group(1)
        assert len(stored.turns) == len(turns)
    finally:
        await nc.close()
