"""Settings: defaults < TOML < environment < --set; errors name their source; secrets never print."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from bus.embedded import find_nats_server
from bus.errors import NatsServerNotFound
from config.secrets import Secret
from config.settings import SettingsError, load_settings, redacted


def test_precedence_defaults_toml_env_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "trinity.toml"
    toml.write_text('[nats]\nservers = ["nats://toml:4222"]\nname = "from-toml"\n'
                    '[node]\nnode_id = "toml-node"\ndrain_timeout_s = 3\n'
                    '[coordinator]\nagent_timeout_s = 7.5\n')
    s = load_settings(environ={}, config_file=toml)
    assert (s.nats.servers, s.nats.name, s.node.node_id, s.node.drain_timeout_s) == (
        ["nats://toml:4222"], "from-toml", "toml-node", 3.0)
    assert s.coordinator.agent_timeout_s == 7.5 and s.node.max_restarts == 5  # default kept
    env = {"TRINITY_CONFIG": str(toml), "NATS_URL": "nats://env:1,nats://env:2",
           "TRINITY__NODE__NODE_ID": "env-node", "TRINITY__COORDINATOR__AGENT_TIMEOUT_S": "9"}
    s = load_settings(environ=env)
    assert s.nats.servers == ["nats://env:1", "nats://env:2"] and s.node.node_id == "env-node"
    assert s.coordinator.agent_timeout_s == 9.0
    s = load_settings(environ=env, overrides=["node.node_id=cli-node", 'node.actors=["coordinator"]'])
    assert s.node.node_id == "cli-node" and s.node.actors == ["coordinator"]


@pytest.mark.parametrize(("env", "overrides", "text", "message"), [
    ({}, ["node.actors=[\"gpu\"]"], None, "unknown ['gpu']"),
    ({"TRINITY__COORDINATOR__AGENT_TIMEOUT_S": "soon"}, [], None, "$.agent_timeout_s"),
    ({}, ["node"], None, "expected section.field=value"),
    ({}, ["nope.x=1"], None, "unknown section 'nope'"),
    ({}, [], "[nats\nservers = 1", "not valid TOML"),
    ({}, [], "[mystery]\nx = 1\n", "unknown section [mystery]"),
    ({}, ["nats.user=\"u\""], None, "user/password"),
])
def test_errors_name_the_source_and_field(tmp_path: Path, env: dict[str, str], overrides: list[str],
                                          text: str | None, message: str) -> None:
    cfg = None
    if text is not None:
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
    with pytest.raises(SettingsError) as ei:
        load_settings(environ=env, config_file=cfg, overrides=overrides)
    assert message in str(ei.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(environ={}, config_file=tmp_path / "nope.toml")


def test_secrets_are_redacted_everywhere() -> None:
    env = {"TRINITY_NATS_USER": "coord", "TRINITY_NATS_PASSWORD": "pw-123456", "TRINITY_AGENTS_PRESET": "paper",
           "OPENAI_API_KEY": "sk-test-abcdef123456", "ANTHROPIC_API_KEY": "sk-ant-xyz987654321"}
    s = load_settings(environ=env)
    dumped = repr(redacted(s)) + repr(s)
    for secret in ("pw-123456", "sk-test-abcdef123456", "sk-ant-xyz987654321"):
        assert secret not in dumped
    # the value is there for the connection that needs it
    assert s.nats.password is not None and s.nats.password.reveal() == "pw-123456"
    redaction = {x.reveal() for x in s.trace_sink.redaction.secrets}
    assert {"sk-test-abcdef123456", "sk-ant-xyz987654321"} <= redaction  # the trace sink scrubs provider keys


def test_missing_nats_server_binary_says_how_to_install() -> None:
    with pytest.raises(NatsServerNotFound) as ei:
        find_nats_server("/nonexistent/nats-server")
    assert "apt-get install -y nats-server" in str(ei.value)


# --- per-field layering (issue 13): a higher source replaces only the fields it gives ---------------------------

#: per section, three different fields: one from the TOML file, one from a ``TRINITY__`` variable, one from
#: ``--set``. All three must survive the merge.
LAYERED: dict[str, tuple[tuple[str, object], tuple[str, object], tuple[str, object]]] = {
    "nats": (("name", "from-toml"), ("connect_timeout_s", 4.5), ("servers", ["nats://cli:4222"])),
    "node": (("node_id", "toml-node"), ("drain_timeout_s", 3.0), ("log_level", "DEBUG")),
    "coordinator": (("agent_timeout_s", 7.5), ("route_attempts", 3), ("role_pack", "custom/1")),
    "role_injector": (("default_pack", "p/1"), ("max_concurrency", 17), ("max_request_bytes", 4096)),
    "model_runtime": (("checkpoint_seed", 7), ("max_queue", 9), ("device", "cpu")),
    "provider_agents": (("queue_group", "agents-toml"), ("max_payload_bytes", 2048), ("local.device", "cuda")),
    "trace_sink": (("durable", "ts-toml"), ("fetch_batch", 16), ("buffer_size", 5000)),
    "registry": (("endpoint", "http://mirror:8080"), ("etag_timeout_s", 3.0), ("offline", True)),
    "fleet": (("lease_ttl_s", 12.0), ("attempt_timeout_s", 2.5), ("placement", "subject")),
}


def _get(settings: object, section: str, dotted: str) -> object:
    value = getattr(settings, section)
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("section", list(LAYERED))
def test_each_source_keeps_the_other_sources_fields(tmp_path: Path, section: str) -> None:
    (tf, tv), (ef, ev), (cf, cv) = LAYERED[section]
    defaults = load_settings(environ={})
    assert all(_get(defaults, section, f) != v for f, v in LAYERED[section])  # every value differs from default
    toml = tmp_path / "t.toml"
    toml.write_text(f"[{section}]\n{tf} = {json.dumps(tv)}\n")  # JSON scalars are TOML values too
    env = {f"TRINITY__{section.upper()}__{ef.upper()}": json.dumps(ev)}
    s = load_settings(environ=env, config_file=toml, overrides=[f"{section}.{cf}={json.dumps(cv)}"])
    assert (_get(s, section, tf), _get(s, section, ef), _get(s, section, cf)) == (tv, ev, cv)
    # the fields no source gave keep their defaults
    given = {tf, ef, cf.split(".")[0]}
    for f in msgspec.structs.fields(getattr(s, section)):
        if f.name not in given and f.name != "redaction":
            assert getattr(getattr(s, section), f.name) == getattr(getattr(defaults, section), f.name), f.name


PAPER_ENV = {"TRINITY_AGENTS_PRESET": "paper", "OPENAI_API_KEY": "sk-test-abcdef123456"}


def _redaction(s: object) -> list[str]:
    return [x.reveal() for x in s.trace_sink.redaction.secrets]  # type: ignore[attr-defined]


def test_set_of_a_trace_sink_field_keeps_provider_keys_in_redaction() -> None:
    """issue 13: ``--set trace_sink.buffer_size=5000`` left the provider keys out of redaction (1 secret -> 0)."""
    assert _redaction(load_settings(environ=PAPER_ENV)) == ["sk-test-abcdef123456"]
    s = load_settings(environ=PAPER_ENV, overrides=["trace_sink.buffer_size=5000"])
    assert s.trace_sink.buffer_size == 5000
    assert _redaction(s) == ["sk-test-abcdef123456"]


def test_paper_preset_survives_a_provider_agents_override(tmp_path: Path) -> None:
    """issue 13: ``TRINITY_AGENTS_PRESET=paper`` plus any ``provider_agents.*`` override fell back to local agents."""
    s = load_settings(environ=PAPER_ENV, overrides=["provider_agents.local.device=cuda"])
    assert [p.name for p in s.provider_agents.providers] == ["openai", "anthropic", "gemini", "vllm"]
    assert [a.provider for a in s.provider_agents.agents][:3] == ["openai", "anthropic", "gemini"]
    assert s.provider_agents.provider("openai").api_key == Secret("sk-test-abcdef123456")
    assert s.provider_agents.local.device == "cuda"
    toml = tmp_path / "t.toml"
    toml.write_text("[provider_agents]\nmax_payload_bytes = 2048\n")
    s = load_settings(environ=PAPER_ENV, config_file=toml)
    assert (s.provider_agents.max_payload_bytes, s.provider_agents.agents[0].model) == (2048, "gpt-5")


def test_conveniences_keep_their_fields_under_toml_and_set(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text('[nats]\nname = "n-toml"\n[trace_sink.jsonl]\nmax_bytes = 4096\n'
                    '[registry]\nendpoint = "http://mirror:8080"\n[provider_agents.local]\ndevice = "cuda"\n')
    env = {"NATS_URL": "nats://e1:4222,nats://e2:4222", "TRINITY_NATS_USER": "coord",
           "TRINITY_NATS_PASSWORD": "pw-123456", "TRINITY_TRACE_JSONL": "/tmp/t.jsonl",
           "TRINITY_TRACE_FULL_TEXT": "1", "HF_TOKEN": "hf_token_123456", "TRINITY_LOCAL_MODEL_CACHE": "/m"}
    s = load_settings(environ=env, config_file=toml,
                      overrides=["nats.connect_timeout_s=9", 'trace_sink.redaction.patterns=["x-[0-9]+"]',
                                 "registry.offline=true", "provider_agents.local.dtype=bfloat16"])
    assert (s.nats.servers, s.nats.user, s.nats.name, s.nats.connect_timeout_s) == (
        ["nats://e1:4222", "nats://e2:4222"], "coord", "n-toml", 9.0)
    assert s.nats.password == Secret("pw-123456")
    assert (s.trace_sink.jsonl.path, s.trace_sink.jsonl.max_bytes, s.trace_sink.jsonl.enabled) == (
        "/tmp/t.jsonl", 4096, True)
    assert (s.trace_sink.redaction.store_full_text, s.trace_sink.redaction.patterns) == (True, ["x-[0-9]+"])
    assert (s.registry.token, s.registry.endpoint, s.registry.offline) == (
        Secret("hf_token_123456"), "http://mirror:8080", True)
    assert (s.provider_agents.local.cache_dir, s.provider_agents.local.device, s.provider_agents.local.dtype) == (
        "/m", "cuda", "bfloat16")
    assert sorted(_redaction(s)) == ["hf_token_123456", "pw-123456"]


def test_environment_beats_toml_on_the_same_field(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text('[trace_sink.jsonl]\npath = "/toml.jsonl"\n[nats]\nservers = ["nats://toml:1"]\n')
    s = load_settings(environ={"TRINITY_TRACE_JSONL": "/env.jsonl", "NATS_URL": "nats://env:1"}, config_file=toml)
    assert (s.trace_sink.jsonl.path, s.nats.servers) == ("/env.jsonl", ["nats://env:1"])
    s = load_settings(environ={"TRINITY_TRACE_JSONL": "/env.jsonl", "TRINITY__TRACE_SINK__JSONL__PATH": "/p"},
                      config_file=toml, overrides=['nats.servers=["nats://cli:1"]'])
    assert (s.trace_sink.jsonl.path, s.nats.servers) == ("/p", ["nats://cli:1"])


def test_listed_redaction_secrets_are_kept_beside_the_configured_ones(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text('[trace_sink.redaction]\nsecrets = ["my-own-secret-1"]\n')
    s = load_settings(environ={**PAPER_ENV, "TRINITY_NATS_TOKEN": "tok-abcdef"}, config_file=toml)
    assert _redaction(s) == ["my-own-secret-1", "tok-abcdef", "sk-test-abcdef123456"]
    assert "my-own-secret-1" not in repr(redacted(s))


def test_a_configured_secret_too_short_to_redact_is_refused() -> None:
    with pytest.raises(SettingsError, match="nats: a secret shorter than 6"):
        load_settings(environ={"TRINITY_NATS_TOKEN": "abc"})


def test_section_errors_name_the_sources(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"\[trace_sink\] \(from environment, --set\).*buffer_size"):
        load_settings(environ={"TRINITY_TRACE_DURABLE": "d"}, overrides=["trace_sink.buffer_size=0"])
    with pytest.raises(SettingsError, match="TRINITY_TRACE_JSONL_KEEP: expected an integer"):
        load_settings(environ={"TRINITY_TRACE_JSONL_KEEP": "many"})
    with pytest.raises(SettingsError, match="TRINITY_TRACE_OTEL: expected one of"):
        load_settings(environ={"TRINITY_TRACE_OTEL": "zipkin"})
