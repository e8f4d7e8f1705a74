"""Answer normalisation and exact grading primitives of the offline world (pure: no I/O, no bus).

Used by the task suite's graders (:mod:`crucible.world.tasks`) and by the tool agents when they act as
Verifiers, so both compare answers by the same rule:

* text: :func:`normalize_text` (Unicode accents removed, case folded, every run of non-alphanumeric
  characters turned into one space, trimmed). ``"São Tomé!"`` and ``"sao tome"`` are equal.
* a text answer is found in a reply when its normalised form occurs in the normalised reply as a whole-word
  sequence (:func:`contains_answer`): ``"The capital of France is Paris."`` contains ``"paris"``;
  ``"Parisian"`` does not.
* numbers: :func:`final_number` is the *last* number written in the reply (comma-grouped thousands
  ``1,234`` are one number; a ``-`` is a sign unless a digit or a closing bracket precedes it, so
  ``5 - 3`` is a subtraction and ``is -3`` a negative number; the number words ``zero``..``twenty`` count).
  ``"17 + 25 = 42."`` gives 42; ``"It is -12"`` gives -12; ``"eight legs"`` gives 8.

Example:
    >>> normalize_text("  Ciudad de México! ")
    'ciudad de mexico'
    >>> contains_answer("The capital of France is Paris.", "paris")
    True
    >>> final_number("347 * 29 = 10,063.")
    10063.0
"""

from __future__ import annotations

import math
import re
import unicodedata

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
#: Digits of one number: comma-grouped thousands or plain digits, optional decimals (its sign is decided apart).
_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\d])")
NUMBER_WORDS: dict[str, int] = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_WORD_NUMBER = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)


def normalize_text(text: str) -> str:
    """Accents removed, case folded, punctuation and whitespace runs turned into single spaces.

    Example:
        >>> normalize_text("Apple, FIG; pear.")
        'apple fig pear'
    """
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_ALNUM.sub(" ", stripped.casefold()).strip()


def contains_answer(reply: str, answer: str) -> bool:
    """Whether ``answer`` occurs in ``reply`` as a whole-word sequence, both normalised.

    An answer that normalises to nothing is never contained.

    Example:
        >>> contains_answer("It is Parisian.", "Paris")
        False
    """
    want = normalize_text(answer)
    return bool(want) and f" {want} " in f" {normalize_text(reply)} "


def numbers_in(text: str) -> list[tuple[int, float]]:
    """Every number in ``text`` with its start offset, in order (digits and the words zero..twenty)."""
    found: list[tuple[int, float]] = []
    for m in _NUMBER.finditer(text):
        value = float(m.group(1).replace(",", ""))
        before = text[:m.start()].rstrip(" ")
        if before.endswith("-") and not re.search(r"[\d)\]]\s*$", before[:-1]):
            value = -value
        found.append((m.start(), value))
    found += [(m.start(), float(NUMBER_WORDS[m.group(1).lower()])) for m in _WORD_NUMBER.finditer(text)]
    return sorted(found)


def final_number(text: str) -> float | None:
    """The last number in ``text`` (see the module docstring), or ``None`` when it has none.

    Example:
        >>> final_number("5 - 8 = -3")
        -3.0
        >>> final_number("no digits here") is None
        True
    """
    found = numbers_in(text)
    return found[-1][1] if found else None


def numbers_equal(a: float, b: float) -> bool:
    """Equal up to float rounding (relative 1e-9, absolute 1e-9)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def format_number(value: float) -> str:
    """An exact integer without decimals, else the shortest round-trip float text.

    Example:
        >>> format_number(12.0), format_number(-2.5)
        ('12', '-2.5')
    """
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
