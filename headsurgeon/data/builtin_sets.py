"""Built-in question sets: the data the default recipe runs on with no external files.

Every set is a fixed *universe* of items built from the tables in ``headsurgeon/data``
with a fixed construction seed, so an id such as ``arith-0123`` always names the same
question text, answer and distractors. The recipe ``seed`` only decides the order in
which items are taken (``n``) and the order of the options; the correct letter is
spread evenly over A-D (position = rank in the seeded order modulo 4).

Splits are disjoint by construction: ``sha256(question text, stripped and lower-cased)``
mod 100 puts an item in ``train`` (0-49, 50 %), ``locate`` (50-69, 20 %) or ``eval``
(70-99, 30 %). The split depends on the text alone, never on the seed, the set or the
position, so the same question can never be in two splits (the same normalisation
``questions.check_disjoint`` compares).

Sets: multiple choice with 4 options -- ``arithmetic``, ``comparisons``, ``capitals``,
``geography``, ``science``, ``everyday``; groups ``facts`` (capitals, geography,
science, everyday) and ``mixed`` (all multiple-choice sets); open-ended ``numeric``
(``choices: []``, answer the number as a plain string); ``neutral_text``: short neutral
paragraphs for KL measures, represented as a Question whose ``question`` is the passage,
``choices`` is ``[]``, ``answer`` is ``"-"`` and ``extras["kind"] == "text"``.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from headsurgeon.data import facts as F
from headsurgeon.core.errors import ValidationError
from headsurgeon.data.questions import LETTERS, Question

SPLITS = ("train", "locate", "eval")
SPLIT_BOUNDS = (("train", 50), ("locate", 70), ("eval", 100))  # bucket < bound, in order
MC_SETS = ("arithmetic", "comparisons", "capitals", "geography", "science", "everyday")
GROUPS = {"facts": ("capitals", "geography", "science", "everyday"), "mixed": MC_SETS}
OPEN_SETS = ("numeric", "neutral_text")
ALL_SETS = MC_SETS + tuple(GROUPS) + OPEN_SETS
N_OPTIONS = 4
NEUTRAL_ANSWER = "-"


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    answer: str
    distractors: tuple[str, ...]  # () for open-ended items
    family: str


def split_of(text: str) -> str:
    """The split a question text belongs to (see the module docstring)."""
    digest = hashlib.sha256(text.strip().lower().encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(name for name, bound in SPLIT_BOUNDS if bucket < bound)


# ------------------------------------------------------------------ helpers

def _an(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


def _join_or(things: list[str]) -> str:
    return ", ".join(things[:-1]) + " or " + things[-1]


def _pick_others(rng: random.Random, pool, answer: str, exclude=()) -> tuple[str, ...]:
    """Three distractors from ``pool`` (deduplicated, table order) other than the answer."""
    seen, cands = set(), []
    for p in pool:
        if p != answer and p not in exclude and p not in seen:
            seen.add(p)
            cands.append(p)
    return tuple(rng.sample(cands, N_OPTIONS - 1))


def _num_distractors(rng: random.Random, ans: int) -> tuple[str, ...]:
    """Three wrong numbers: one close (off by 1, 2 or 10), two a few steps away."""
    out: list[int] = []
    close = [d for d in (1, -1, 2, -2, 10, -10) if ans + d >= 0]
    out.append(ans + rng.choice(close))
    while len(out) < N_OPTIONS - 1:
        c = ans + rng.choice((-1, 1)) * rng.randint(3, max(6, ans // 3))
        if c >= 0 and c != ans and c not in out:
            out.append(c)
    return tuple(str(x) for x in out)


def _finish(prefix: str, raw: list[tuple[str, str, tuple[str, ...], str]]) -> list[Item]:
    """Number items in order, dropping repeated texts; check options are distinct."""
    items, texts = [], set()
    for question, answer, distractors, family in raw:
        key = question.strip().lower()
        if key in texts:
            continue
        texts.add(key)
        opts = (answer,) + tuple(distractors)
        if distractors and (len(opts) != N_OPTIONS or len(set(opts)) != N_OPTIONS):
            raise AssertionError(f"{prefix}: bad options for {question!r}: {opts}")
        items.append(Item(f"{prefix}-{len(items):04d}", question, answer,
                          tuple(distractors), family))
    return items


# ------------------------------------------------------------------ universes

def _arithmetic() -> list[Item]:
    rng = random.Random("headsurgeon/arithmetic/1")
    raw = []
    for _ in range(90):
        a, b = rng.randint(3, 60), rng.randint(3, 40)
        raw.append((f"What is {a} + {b}?", str(a + b), _num_distractors(rng, a + b), "add"))
    for _ in range(60):
        a = rng.randint(12, 90)
        b = rng.randint(2, a - 2)
        raw.append((f"What is {a} - {b}?", str(a - b), _num_distractors(rng, a - b), "sub"))
    for _ in range(70):
        a, b = rng.randint(2, 10), rng.randint(2, 12)
        raw.append((f"What is {a} × {b}?", str(a * b), _num_distractors(rng, a * b), "mul"))
    return _finish("arith", raw)


def _distinct(rng: random.Random, make, k: int = N_OPTIONS) -> list:
    out: list = []
    while len(out) < k:
        v = make()
        if v not in out:
            out.append(v)
    return out


def _comparisons() -> list[Item]:
    rng = random.Random("headsurgeon/comparisons/1")
    raw = []

    def add(question, values, answer, family):
        raw.append((question, answer, tuple(v for v in values if v != answer), family))

    for kind, pick in (("largest", max), ("smallest", min)):
        for _ in range(30):
            nums = _distinct(rng, lambda: rng.randint(1, 99))
            words = [str(n) for n in nums]
            add(f"Which number is the {kind}: {_join_or(words)}?", words, str(pick(nums)),
                f"int_{kind}")
    for _ in range(25):
        nums = _distinct(rng, lambda: rng.choice((rng.randint(1, 9) / 10,
                                                  rng.randint(1, 99) / 100)))
        words = [f"{n:g}" for n in nums]
        add(f"Which number is the largest: {_join_or(words)}?", words, f"{max(nums):g}",
            "decimal_largest")
    for _ in range(30):
        words = _distinct(rng, lambda: rng.choice(F.WORDS))
        if len({w[0] for w in words}) < N_OPTIONS:
            continue
        add(f"Which word comes first in alphabetical order: {_join_or(words)}?", words,
            min(words), "alphabet")
    for _ in range(25):
        months = _distinct(rng, lambda: rng.choice(F.MONTHS))
        add(f"Which month comes earliest in the year: {_join_or(months)}?", months,
            min(months, key=F.MONTHS.index), "month_order")
    for _ in range(15):
        days = _distinct(rng, lambda: rng.choice(F.DAYS))
        add(f"Which day comes first in a week that starts on Monday: {_join_or(days)}?",
            days, min(days, key=F.DAYS.index), "day_order")
    for groups, what, big, small, n_each in (
            (F.ANIMAL_SIZE_GROUPS, "animal", "largest", "smallest", 18),
            (F.WEIGHT_GROUPS, "thing", "heaviest", "lightest", 15)):
        for kind in (big, small):
            for _ in range(n_each):
                levels = sorted(rng.sample(range(len(groups)), N_OPTIONS))
                things = [rng.choice(groups[lv]) for lv in levels]
                answer = things[-1] if kind == big else things[0]
                rng.shuffle(things)
                add(f"Which {what} is the {kind}: {_join_or(things)}?", things, answer,
                    f"{what}_{kind}")
    return _finish("cmp", raw)


def _capitals() -> list[Item]:
    rng = random.Random("headsurgeon/capitals/1")
    pool = [c for _, c in F.CAPITALS]
    return _finish("cap", [(f"What is the capital of {country}?", cap,
                            _pick_others(rng, pool, cap), "capital")
                           for country, cap in F.CAPITALS])


def _geography() -> list[Item]:
    rng = random.Random("headsurgeon/geography/1")
    raw = [(f"On which continent is {country}?", cont,
            _pick_others(rng, F.CONTINENTS, cont), "continent")
           for country, cont in F.COUNTRY_CONTINENT]
    langs = [lang for _, lang in F.LANGUAGES]
    raw += [(f"What is the main language spoken in {country}?", lang,
             _pick_others(rng, langs, lang), "language") for country, lang in F.LANGUAGES]
    raw += [(q, a, d, "geography") for q, a, d in F.GEOGRAPHY]
    return _finish("geo", raw)


def _science() -> list[Item]:
    return _finish("sci", [(q, a, d, "science") for q, a, d in F.SCIENCE])


def _everyday() -> list[Item]:
    rng = random.Random("headsurgeon/everyday/1")
    raw = []

    def table(rows, template, family, pool=None, clashes=None):
        answers = pool or [a for _, a in rows]
        for row in rows:
            subject, answer = row[0], row[1]
            exclude = row[2] if len(row) > 2 else (clashes or {}).get(subject, ())
            raw.append((template(subject), answer,
                        _pick_others(rng, answers, answer, exclude), family))

    table(F.ANIMAL_SOUNDS, lambda x: f"What sound does {_an(x)} make?", "animal_sound")
    table(F.BABY_ANIMALS, lambda x: f"What is a baby {x} called?", "baby_animal")
    table(F.ANIMAL_CLASS, lambda x: f"What type of animal is {_an(x)}?", "animal_class",
          pool=F.ANIMAL_CLASSES)
    table(F.ANIMAL_LEGS, lambda x: f"How many legs does {_an(x)} have?", "legs",
          pool=F.LEG_COUNTS)
    table(F.COLOUR_OF, lambda x: f"What colour is {x}?", "colour", pool=F.COLOURS)
    table(F.COLOUR_MIX, lambda x: f"What colour do you get when you mix {x} paint?",
          "colour_mix", pool=F.COLOURS)
    table(F.OPPOSITES, lambda x: f'What is the opposite of "{x}"?', "opposite",
          clashes=F.OPPOSITE_CLASHES)
    raw += [(q, a, d, "quantity") for q, a, d in F.QUANTITIES]
    for names, unit in ((F.DAYS, "day"), (F.MONTHS, "month")):
        k = len(names)
        for i, name in enumerate(names):
            for word, j in (("after", (i + 1) % k), ("before", (i - 1) % k)):
                answer = names[j]
                raw.append((f"Which {unit} comes right {word} {name}?", answer,
                            _pick_others(rng, names, answer, (name,)), f"{unit}_{word}"))
    return _finish("everyday", raw)


def _numeric() -> list[Item]:
    """Small-number arithmetic, open-ended (a 135M model must not sit at the floor)."""
    rng = random.Random("headsurgeon/numeric/2")
    ask = "Reply with just the number."
    raw = []
    for _ in range(110):
        a, b = rng.randint(1, 30), rng.randint(1, 20)
        raw.append((f"What is {a} plus {b}? {ask}", str(a + b), (), "add"))
    for _ in range(90):
        a = rng.randint(5, 40)
        b = rng.randint(1, a - 1)
        raw.append((f"What is {a} minus {b}? {ask}", str(a - b), (), "sub"))
    for _ in range(90):
        a, b = rng.randint(2, 10), rng.randint(2, 10)
        raw.append((f"What is {a} times {b}? {ask}", str(a * b), (), "mul"))
    return _finish("num", raw)


def _neutral_text() -> list[Item]:
    text = resources.files("headsurgeon.data").joinpath("neutral_text.txt").read_text("utf-8")
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    return _finish("neutral", [(p, NEUTRAL_ANSWER, (), "text") for p in paragraphs])


_BUILDERS = {"arithmetic": _arithmetic, "comparisons": _comparisons, "capitals": _capitals,
             "geography": _geography, "science": _science, "everyday": _everyday,
             "numeric": _numeric, "neutral_text": _neutral_text}


@lru_cache(maxsize=None)
def universe(name: str) -> tuple[Item, ...]:
    """Every item of one set (not a group), in id order."""
    if name not in _BUILDERS:
        raise ValidationError(f"unknown built-in set {name!r} (known: "
                              f"{', '.join(ALL_SETS)})", field="set")
    return tuple(_BUILDERS[name]())


# ------------------------------------------------------------------ questions

def _to_question(name: str, item: Item, position: int, seed: int) -> Question:
    source = f"builtin-{name}/{split_of(item.question)}"
    if not item.distractors:
        extras = {"kind": "text"} if name == "neutral_text" else {"family": item.family}
        return Question(item.id, item.question, (), item.answer, source, extras)
    options = list(item.distractors)
    random.Random(f"{item.id}/{seed}").shuffle(options)
    options.insert(position, item.answer)
    return Question(item.id, item.question, tuple(options), LETTERS[position], source,
                    {"family": item.family})


def _ordered(name: str, seed: int) -> list[Question]:
    """All questions of one set in the seeded order, options placed for this seed."""
    items = universe(name)
    order = list(range(len(items)))
    random.Random(f"{name}/{seed}").shuffle(order)
    return [_to_question(name, items[i], rank % N_OPTIONS, seed)
            for rank, i in enumerate(order)]


def builtin_questions(name: str = "mixed", split: str = "all", n: int | None = None,
                      seed: int = 0) -> list[Question]:
    """Questions of a built-in set or group, one split (or ``all``), the first ``n`` in the
    seeded order. Deterministic: the same arguments give the same questions, byte for byte."""
    if split not in SPLITS + ("all",):
        raise ValidationError(f"unknown split {split!r} (known: {', '.join(SPLITS)}, all)",
                              field="split")
    if name in GROUPS:
        pool = [q for member in GROUPS[name] for q in _ordered(member, seed)]
        random.Random(f"{name}/{seed}").shuffle(pool)
    else:
        universe(name)  # unknown name -> error
        pool = _ordered(name, seed)
    chosen = [q for q in pool if split == "all" or split_of(q.question) == split]
    if n is not None:
        if n > len(chosen):
            raise ValidationError(f"built-in set {name!r} split {split!r} has {len(chosen)} "
                                  f"items, fewer than n={n}", field="n")
        chosen = chosen[:n]
    return chosen


def split_counts() -> dict[str, dict[str, int]]:
    """``{set: {train: k, locate: k, eval: k, all: k}}`` for every set and group."""
    out = {}
    for name in ALL_SETS:
        qs = builtin_questions(name)
        counts = {s: 0 for s in SPLITS}
        for q in qs:
            counts[split_of(q.question)] += 1
        out[name] = {**counts, "all": len(qs)}
    return out
