"""Settings: defaults < TOML < environment < --set; errors name their source; secrets never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.embedded import find_nats_server
from bus.errors import NatsServerNotFound
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
