"""Operator commands through ``run.main`` in-process: fetch, verify, export, route, bench, env-check."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import run
from tests.registry.hub_server import FakeHub, serve

ROOT = Path(__file__).resolve().parents[2]
FILES = {"manifest.json": b'{"m": 1}\n', "weights/a.bin": bytes(range(256)) * 40}


def _pin(tmp_path: Path, files: dict[str, bytes] = FILES) -> Path:
    pin = {"version": 1, "repo_id": "acme/bundle", "revision": "v2", "manifest_sha256":
           hashlib.sha256(files["manifest.json"]).hexdigest(),
           "files": [{"path": p, "sha256": hashlib.sha256(d).hexdigest()} for p, d in files.items()]}
    path = tmp_path / "pin.json"
    path.write_text(json.dumps(pin))
    return path


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with serve(FakeHub("acme/bundle", "v2", dict(FILES))) as h:
        yield h


def test_fetch_from_a_hub_endpoint_then_offline(tmp_path: Path, hub: FakeHub,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    pin = _pin(tmp_path)
    cache = tmp_path / "cache"
    args = ["fetch", "--pin", str(pin), "--endpoint", hub.url, "--cache-dir", str(cache)]
    assert run.main(args) == 0
    out = capsys.readouterr()
    assert "2/2 files verified for acme/bundle@v2" in out.out and "(2 fetched)" in out.out
    assert "fetching weights/a.bin" in out.err  # progress on stderr
    assert run.main([*args, "--offline", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {f["origin"] for f in data["files"]} == {"cache"}
    assert Path(data["files"][1]["local_path"]).read_bytes() == FILES["weights/a.bin"]


def test_fetch_failures_exit_1_with_a_message(tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    pin = _pin(tmp_path)
    hub.fault("weights/a.bin", "get-corrupt")
    assert run.main(["fetch", "--pin", str(pin), "--endpoint", hub.url, "--cache-dir", str(tmp_path / "c")]) == 1
    assert "differs from the pinned" in capsys.readouterr().err
    assert run.main(["fetch", "--pin", str(pin), "--cache-dir", str(tmp_path / "d"), "--offline"]) == 1
    assert "offline: 2 pinned file(s)" in capsys.readouterr().err
    hub.token = "t"
    assert run.main(["fetch", "--pin", str(pin), "--endpoint", hub.url, "--cache-dir", str(tmp_path / "e")]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("t\n")
    assert run.main(["fetch", "--pin", str(pin), "--endpoint", hub.url, "--cache-dir", str(tmp_path / "e"),
                     "--token-file", str(token)]) == 0


def test_fetch_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["fetch", "--pin", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert run.main(["fetch", "--pin", str(_pin(tmp_path)), "--endpoint", "ftp://x"]) == 2
    assert "endpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 2}')
    assert run.main(["fetch", "--pin", str(bad), "--offline"]) == 1
    assert "not a valid artifact pin" in capsys.readouterr().err


def test_fetch_from_a_local_dir_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    pin = _pin(tmp_path)
    assert run.main(["fetch", "--pin", str(pin), "--local-dir", str(src), "--cache-dir", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert run.main(["verify", str(src), "--pin", str(pin)]) == 0
    assert "2/2 files verified" in capsys.readouterr().out
    (src / "weights/a.bin").write_bytes(b"x")
    assert run.main(["verify", str(src), "--pin", str(pin)]) == 1
    assert "mismatch weights/a.bin" in capsys.readouterr().out
    assert run.main(["verify", str(tmp_path / "nope"), "--pin", str(pin)]) == 2


def test_export_tiny_bundle_verifies_and_records_lineage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(5)
    vector = tmp_path / "v.npy"
    np.save(vector, np.concatenate([rng.normal(0, 0.1, 512), rng.normal(0, 1, 640)]))
    out = tmp_path / "bundle"
    args = ["export", "--tiny", "--vector", str(vector), "--out", str(out), "--factor-cache", str(tmp_path / "f"),
            "--cache-dir", str(tmp_path / "reg")]
    code = run.main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "11/11 files verified" in captured.out and "[9/9] adapting lm_head.weight" in captured.err
    assert run.main(["verify", str(out)]) == 0
    (record,) = (tmp_path / "reg" / "lineage").glob("*.json")
    assert json.loads(record.read_text())["bundle_dir"] == str(out.resolve())
    assert run.main(["export", "--tiny", "--vector", str(vector), "--out", str(out),
                     "--factor-cache", str(tmp_path / "f")]) == 1
    assert "not empty" in capsys.readouterr().err
    full = tmp_path / "full.npy"
    np.save(full, np.zeros(19456))
    assert run.main(["export", "--tiny", "--vector", str(full), "--out", str(tmp_path / "o2"),
                     "--factor-cache", str(tmp_path / "f")]) == 1
    assert "does not fit" in capsys.readouterr().err


def test_route_prompt_and_transcript(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["route", "--tiny", "--prompt", "What is 17 + 25? Answer briefly.", "--json"]) == 0
    by_prompt = json.loads(capsys.readouterr().out)
    assert by_prompt["token_count"] == 15 and len(by_prompt["agent_logits"]) == 7
    assert by_prompt["transcript_hash"] == "05485d3e42e7b2e0c63bad13d446915173499b5a9a980faff24195c33bdbf0b3"
    assert by_prompt["role"] in ("worker", "thinker", "verifier") and len(by_prompt["route_hash"]) == 64
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps({"messages": [{"role": "user", "content": "What is 17 + 25? Answer briefly."}]}))
    assert run.main(["route", "--tiny", "--transcript", str(transcript), "--json", "--agents", "1,3"]) == 0
    masked = json.loads(capsys.readouterr().out)
    assert masked["agent_id"] in (1, 3) and masked["agent_logits"] == by_prompt["agent_logits"]
    assert run.main(["route", "--tiny", "--prompt", "2 + 2?"]) == 0
    assert "route hash" in capsys.readouterr().out


def test_route_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        run.main(["route", "--tiny"])  # argparse: one of --transcript/--prompt is required
    assert e.value.code == 2
    bad = tmp_path / "bad.json"
    bad.write_text('[{"role": "robot", "content": "x"}]')
    assert run.main(["route", "--tiny", "--transcript", str(bad)]) == 2
    assert "role" in capsys.readouterr().err
    assert run.main(["route", "--tiny", "--prompt", "  "]) == 2
    assert run.main(["route", "--tiny", "--prompt", "x", "--agents", "a,b"]) == 2


def test_bench_lists_and_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "bus" in listed and "scripts/bench_bus.py" in listed
    assert run.main(["bench", "nope"]) == 2
    assert "unknown benchmark(s) nope" in capsys.readouterr().err
    assert run.main(["bench"]) == 2


def test_bench_runs_a_script_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.commands import bench

    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bench_ok.py").write_text("import sys; print('ratio 1.0', sys.argv[1:])\n")
    (tmp_path / "scripts" / "bench_bad.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(bench, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(bench, "available", lambda root=tmp_path: {p.stem[6:]: p for p in
                                                                   (tmp_path / "scripts").glob("bench_*.py")})
    assert run.main(["bench", "ok", "--arg=--quick"]) == 0
    assert run.main(["bench", "bench_ok.py", "bad"]) == 1


def test_env_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["env-check", "--json", "--nats", "nats://127.0.0.1:1", "--nats-timeout", "0.5"]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["torch"]["status"] == "ok" and checks["torch"]["detail"].startswith("2.13.0")
    assert checks["nats-py"]["status"] == "ok" and checks["tokenizer"]["status"] == "ok"
    assert checks["nats nats://127.0.0.1:1"]["status"] == "warn"
    assert run.main(["env-check", "--strict", "--nats", "nats://127.0.0.1:1", "--nats-timeout", "0.5"]) == 1
    assert run.main(["env-check", "--nats-timeout", "0"]) == 2


async def test_env_check_reaches_a_real_nats_server(nats_server, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from config.settings import load_settings
    from ops.commands import env_check

    args = run.build_parser().parse_args(["env-check", "--json"])
    settings = load_settings(environ={}, overrides=[f'nats.servers=["{nats_server.url}"]'])
    assert await env_check.run(args, settings) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks[f"nats {nats_server.url}"]["status"] == "ok"
    assert "jetstream on" in checks[f"nats {nats_server.url}"]["detail"]


def test_env_check_help_in_a_subprocess() -> None:
    proc = subprocess.run([sys.executable, "run.py", "env-check", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--strict" in proc.stdout and "--nats-timeout" in proc.stdout


@pytest.mark.parametrize("command", ["fetch", "verify", "export", "route", "gate", "bench", "env-check"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        run.main([command, "--help"])
    assert e.value.code == 0 and "usage: run.py " + command in capsys.readouterr().out


def test_route_reads_the_real_vector_under_sakana(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A vector named like the released one routes under ``sakana`` (chat template) unless told otherwise."""
    rng = np.random.default_rng(3)
    vector = tmp_path / "sakana_model_iter_60.npy"  # tiny-shaped, named as the released vector
    np.save(vector, np.concatenate([rng.normal(0, 0.2, 512), rng.normal(0, 1, 640)]))
    common = ["route", "--tiny", "--prompt", "What is 17 + 25?", "--vector", str(vector), "--factor-cache",
              str(tmp_path / "factors"), "--json"]
    assert run.main(common) == 0
    sakana = json.loads(capsys.readouterr().out)
    assert sakana["routing_profile"] == "sakana" and sakana["source"]["tied_embedding"] == "lm_head-wins"
    assert run.main([*common, "--routing-profile", "elixir-port"]) == 0
    port = json.loads(capsys.readouterr().out)
    assert port["routing_profile"] == "elixir-port" and port["source"]["tied_embedding"] == "embed-wins"
    assert sakana["token_count"] > port["token_count"] + 30  # the template, system prompt and collaboration line
