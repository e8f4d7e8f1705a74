"""Provider agents: TRINITY's agent ids served by LLM providers, behind ``trinity.agent.<id>.call``.

Modules: ``wire`` (OpenAI-compatible, Anthropic Messages, Gemini generateContent over httpx), ``http``
(deadlines, retries with backoff/jitter/``Retry-After``), ``local_model`` (in-process SmolLM2 with
transformers: the only module here importing torch, loaded lazily), ``pool`` (roster, per-agent
concurrency, usage and cost), ``errors`` (typed failures mapped to ``ErrorCode``), ``actor`` (the bus side).
"""
