"""Training with paid agents: ``run.py train --agents configured`` against a local OpenAI-compatible server that
charges tokens; the spend budget stops the run (exit 3, checkpoint kept), ``--resume`` with a higher budget
finishes it, and ``--dry-run`` estimates without calling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crucible.training.budget import BudgetExhausted, SpendMeter, estimate
from crucible.training.trainer import load_state
from tests.provider_agents.loopback import LoopbackServer, Reply
from tests.training.test_command import _train

MAX_TOKENS = 16
PRICE_IN, PRICE_OUT = 1.0, 10.0  # USD per 1M tokens


class ChargingServer(LoopbackServer):
    """An OpenAI-compatible chat server that answers "42" and charges a token per 4 characters of the request's
    messages, plus the whole ``max_tokens`` of the completion."""

    def _next_reply(self) -> Reply:
        body = self.requests[-1].json()
        prompt = (sum(len(m["content"]) for m in body["messages"]) + 3) // 4
        return Reply(200, {"model": body["model"], "choices": [{"message": {"content": "42"}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": prompt, "completion_tokens": body["max_tokens"]}})


def _cost(recorded: object) -> float:
    body = recorded.json()  # type: ignore[attr-defined]
    prompt = (sum(len(m["content"]) for m in body["messages"]) + 3) // 4
    return (prompt * PRICE_IN + body["max_tokens"] * PRICE_OUT) / 1e6


def _toml(url: str) -> str:
    out = [f'[[provider_agents.providers]]\nname = "fake"\nkind = "openai"\nbase_url = "{url}/v1"\n'
           'api_key = "sk-test"\n[provider_agents.providers.retry]\nmax_attempts = 1\n']
    for i in range(7):
        out.append(f'[[provider_agents.agents]]\nagent_id = {i}\nname = "a{i}"\nprovider = "fake"\nmodel = "m{i}"\n'
                   f'price_in_per_mtok = {PRICE_IN}\nprice_out_per_mtok = {PRICE_OUT}\n')
    return "\n".join(out)


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackServer]:
    async with ChargingServer() as s:
        yield s


def test_meter_and_estimate() -> None:
    m = SpendMeter(limit_usd=0.005)
    m.add(0.002)
    m.check()
    m.add(0.003)
    with pytest.raises(BudgetExhausted, match=r"\$0.0050 of \$0.0050.*--budget-usd MORE"):
        m.check()
    assert SpendMeter().exhausted is False
    e = estimate(generations=2, popsize=3, batch=4, valid=5, test=6, test_each_generation=True, max_turns=2,
                 agent_max_tokens=10, questions=["x" * 40], prices={1: (1.0, 10.0), 2: (3.0, 30.0)},
                 system_chars=400, budget_usd=1.0)
    # episodes: 2 x (3 x 4 + 5 + 6) + 6 + 5 = 57; prompt per episode: (100 + 10) + (100 + 10 + 10 + 8) = 238
    assert (e["episodes"], e["agent_calls_max"], e["prompt_tokens_max"], e["completion_tokens_max"]) == \
        (57, 114, 57 * 238, 1140)
    assert e["cost_usd_max"] == pytest.approx((3.0 * 57 * 238 + 30.0 * 1140) / 1e6)
    assert e["cost_usd_uniform"] == pytest.approx((2.0 * 57 * 238 + 20.0 * 1140) / 1e6)
    assert e["fits_budget"] is True


async def test_budget_stops_training_and_resume_finishes_it(tmp_path: Path, srv: ChargingServer) -> None:
    cfg = tmp_path / "agents.toml"
    cfg.write_text(_toml(srv.url))
    run_dir = tmp_path / "paid"
    common = ["--config", str(cfg), "--no-progress"]
    args = ["--backbone", "tiny", "--agents", "configured", "--generations", "2", "--popsize", "3", "--limit", "2",
            "--batch", "4", "--max-turns", "2", "--agent-max-tokens", str(MAX_TOKENS)]

    code, out, err = await _train("--run-dir", str(run_dir), *args, "--dry-run", "--budget-usd", "0.005", *common)
    assert code == 0, err
    dry = json.loads(out)
    assert srv.requests == []  # the estimate called nothing
    # 2 x (3 x 4 + 8 + 8) + 8 + 8 = 72 episodes of at most 2 calls
    assert (dry["episodes"], dry["agent_calls_max"]) == (72, 144) and dry["fits_budget"] is False
    assert dry["cost_usd_max"] > 0.005 and not (run_dir / "checkpoint.pkl").exists()

    code, out, err = await _train("--run-dir", str(run_dir), *args, "--budget-usd", "0.005", *common)
    assert code == 3, err
    stopped = json.loads(out)
    calls = len(srv.requests)
    assert stopped["stopped"] == "budget" and "--resume" in stopped["resume"] and "spend budget used up" in err
    # the meter is checked before each episode: at most one episode (2 calls) past the limit
    assert stopped["spent_usd"] == pytest.approx(sum(_cost(r) for r in srv.requests))
    assert stopped["spent_usd"] >= 0.005 > stopped["spent_usd"] - sum(_cost(r) for r in srv.requests[-2:])
    state = load_state(run_dir)
    assert state.spent_usd == pytest.approx(stopped["spent_usd"]) and state.generation == stopped["generation"] < 2
    body = srv.requests[0].json()
    assert body["model"].startswith("m") and body["max_tokens"] == MAX_TOKENS and body["temperature"] == 0.0

    code, out, err = await _train("--resume", str(run_dir), "--budget-usd", "10", *common)
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["generations"] == 2 and manifest["budget_usd"] == 10.0
    # the spend of every process is in the manifest: each call the server answered, once
    assert manifest["spent_usd"] == pytest.approx(sum(_cost(r) for r in srv.requests))
    # memoized replies make the real spend a fraction of the dry run's upper bound
    assert len(srv.requests) > calls and manifest["spent_usd"] <= dry["cost_usd_max"]
