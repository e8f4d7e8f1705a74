"""Typed settings for a whole node, loaded from defaults, a TOML file, the environment and CLI overrides.

This module (with the rest of ``config/``) is the only place that reads the environment. Everything else
receives a :class:`Settings` (or one of its sections) explicitly.

Precedence, lowest first: built-in defaults < TOML file (``--config`` or ``TRINITY_CONFIG``) < environment
(``TRINITY__SECTION__FIELD=value``, plus the conveniences below) < CLI ``--set section.field=value``.
Values from the environment and ``--set`` are parsed as JSON when they parse (numbers, booleans, lists),
else taken as strings.

Convenience variables: ``NATS_URL`` (comma-separated servers), ``TRINITY_NATS_USER`` /
``TRINITY_NATS_PASSWORD`` / ``TRINITY_NATS_TOKEN``, provider keys (``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``...; see :mod:`config.provider_agents`) and the trace sink's
``TRINITY_TRACE_*`` variables (see :mod:`config.trace_sink`).

Example:
    >>> s = load_settings(environ={"NATS_URL": "nats://a:4222,nats://b:4222"}, overrides=["node.node_id=n7"])
    >>> (s.nats.servers, s.node.node_id)
    (['nats://a:4222', 'nats://b:4222'], 'n7')
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from config.coordinator import CoordinatorSettings, RoleInjectorSettings
from config.fleet import FleetSettings
from config.model_runtime import ModelRuntimeSettings
from config.nats import NatsSettings
from config.node import NodeSettings
from config.provider_agents import ProviderAgentsSettings, provider_agents_settings_from_env
from config.registry import RegistrySettings, registry_settings_from_env
from config.secrets import Secret, secret_dec_hook, secret_enc_hook
from config.trace_sink import TraceSinkSettings, trace_sink_settings_from_env

ENV_PREFIX = "TRINITY__"
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "nats": NatsSettings,
    "node": NodeSettings,
    "coordinator": CoordinatorSettings,
    "role_injector": RoleInjectorSettings,
    "model_runtime": ModelRuntimeSettings,
    "provider_agents": ProviderAgentsSettings,
    "trace_sink": TraceSinkSettings,
    "registry": RegistrySettings,
    "fleet": FleetSettings,
}


class SettingsError(ValueError):
    """Settings could not be loaded; the message names the source and the field."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """All settings of a node, one section per concern."""

    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    coordinator: CoordinatorSettings = msgspec.field(default_factory=CoordinatorSettings)
    role_injector: RoleInjectorSettings = msgspec.field(default_factory=RoleInjectorSettings)
    model_runtime: ModelRuntimeSettings = msgspec.field(default_factory=ModelRuntimeSettings)
    provider_agents: ProviderAgentsSettings = msgspec.field(default_factory=ProviderAgentsSettings)
    trace_sink: TraceSinkSettings = msgspec.field(default_factory=TraceSinkSettings)
    registry: RegistrySettings = msgspec.field(default_factory=RegistrySettings)
    fleet: FleetSettings = msgspec.field(default_factory=FleetSettings)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_path(doc: dict[str, Any], path: Sequence[str], value: Any, source: str) -> None:
    if not path or path[0] not in SECTIONS:
        raise SettingsError(f"{source}: unknown section {path[0] if path else ''!r}; sections are "
                            f"{', '.join(SECTIONS)}")
    node = doc
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SettingsError(f"{source}: {'.'.join(path)} goes through a non-table value")
        node = child
    node[path[-1]] = value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"config file {path} is not valid TOML: {e}") from None


def load_settings(*, environ: Mapping[str, str] | None = None, config_file: str | Path | None = None,
                  overrides: Sequence[str] = ()) -> Settings:
    """Load settings; ``environ`` defaults to the process environment (the only read of it).

    Raises :class:`SettingsError` naming the file, variable or override and the bad field.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    doc: dict[str, Any] = {}
    path = config_file or env.get("TRINITY_CONFIG")
    if path:
        doc = _read_toml(Path(path).expanduser())
        for key in doc:
            if key not in SECTIONS:
                raise SettingsError(f"config file {path}: unknown section [{key}]; sections are {', '.join(SECTIONS)}")
    if url := env.get("NATS_URL"):
        _set_path(doc, ["nats", "servers"], [u.strip() for u in url.split(",") if u.strip()], "NATS_URL")
    for var, field in (("TRINITY_NATS_USER", "user"), ("TRINITY_NATS_PASSWORD", "password"),
                       ("TRINITY_NATS_TOKEN", "token"), ("TRINITY_NATS_CREDS", "creds_file"),
                       ("TRINITY_NATS_NKEYS_SEED", "nkeys_seed")):
        if value := env.get(var):
            _set_path(doc, ["nats", field], value, var)
    for key, value in sorted(env.items()):
        if key.startswith(ENV_PREFIX):
            _set_path(doc, key[len(ENV_PREFIX):].lower().split("__"), _parse_value(value), key)
    for item in overrides:
        if "=" not in item:
            raise SettingsError(f"--set {item!r}: expected section.field=value")
        dotted, value = item.split("=", 1)
        _set_path(doc, dotted.strip().split("."), _parse_value(value), f"--set {dotted}")
    return _build(doc, env)


def _build(doc: dict[str, Any], env: Mapping[str, str]) -> Settings:
    sections: dict[str, Any] = {}
    for name, type_ in SECTIONS.items():
        raw = doc.get(name)
        if raw is None:
            continue
        try:
            sections[name] = msgspec.convert(raw, type_, strict=False, dec_hook=secret_dec_hook)
        except msgspec.ValidationError as e:
            raise SettingsError(f"settings section [{name}]: {e}") from None
    try:
        if "registry" not in sections:
            sections["registry"] = registry_settings_from_env(env)
        if "provider_agents" not in sections:
            sections["provider_agents"] = provider_agents_settings_from_env(env)
        if "trace_sink" not in sections:
            secrets = sections["provider_agents"].secrets()
            if "nats" in sections:
                secrets += sections["nats"].secrets()
            if sections["registry"].token is not None:
                secrets.append(sections["registry"].token.reveal())
            sections["trace_sink"] = trace_sink_settings_from_env(env, secrets=[Secret(s) for s in secrets])
    except (ValueError, msgspec.ValidationError) as e:
        raise SettingsError(f"environment: {e}") from None
    return Settings(**sections)


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret shown as ``'***'`` (safe to print or log)."""
    data: dict[str, Any] = msgspec.to_builtins(settings, enc_hook=secret_enc_hook)
    data["nats"] = settings.nats.redacted()
    return data
