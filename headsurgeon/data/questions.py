"""Questions: one record type for every question set, and the checks all loaders share.

The schema is ``../shared/data``'s: ``id``, ``question``, ``choices`` (``[]`` for open-ended
items), ``answer`` (a letter for multiple choice, the gold string otherwise), ``source``
and free extras. Dataset plugins turn files, Hugging Face datasets or generators into
lists of :class:`Question`; this module validates them and splits them disjointly.
"""
from __future__ import annotations

import hashlib
import json
import random
import string
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from headsurgeon.core.errors import ValidationError

LETTERS = string.ascii_uppercase
MAX_LINE_BYTES = 1 << 20  # a question line over 1 MiB is not a question


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: str
    source: str = ""
    extras: dict = field(default_factory=dict, compare=False, hash=False)
    # where the item was read (errors name it); not part of the question itself
    file: str = field(default="", compare=False, hash=False, repr=False)
    line: Optional[int] = field(default=None, compare=False, hash=False, repr=False)

    @property
    def is_mc(self) -> bool:
        return bool(self.choices)

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.choices)]

    @property
    def answer_index(self) -> int:
        return LETTERS.index(self.answer)

    @property
    def answer_text(self) -> str:
        return self.choices[self.answer_index] if self.is_mc else self.answer

    def wrong_letters(self) -> list[str]:
        return [l for l in self.letters if l != self.answer]

    def to_dict(self) -> dict:
        return {"id": self.id, "question": self.question, "choices": list(self.choices),
                "answer": self.answer, "source": self.source, **self.extras}


def question_from_dict(d: dict, *, file: str, line: int | None = None,
                       require_mc: bool = False, allow_duplicate_options: bool = False
                       ) -> Question:
    """Validate one record of the shared schema; errors name file, line and field. The one
    check of an item's options every loader goes through: the answer is exactly one of the
    option letters, no option is empty, no two options are the same text (unless
    ``allow_duplicate_options``: some public sets have such items)."""
    def bad(fld: str, msg: str) -> ValidationError:
        return ValidationError(msg, file=file, line=line, field=fld)

    if not isinstance(d, dict):
        raise bad("", "each line must be a JSON object")
    for key in ("id", "question", "answer"):
        if key not in d:
            raise bad(key, "required field is missing")
    qid, text, answer = d["id"], d["question"], d["answer"]
    if not isinstance(qid, (str, int)) or str(qid) == "":
        raise bad("id", "must be a non-empty string")
    if not isinstance(text, str) or not text.strip():
        raise bad("question", "must be a non-empty string")
    choices = d.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise bad("choices", "must be a list of strings")
    if len(choices) > len(LETTERS):
        raise bad("choices", f"at most {len(LETTERS)} options")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool) and not choices:
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise bad("answer", "must be a non-empty string")
    if choices:
        if len(choices) < 2:
            raise bad("choices", "a multiple-choice item needs at least 2 options")
        if answer not in tuple(LETTERS[: len(choices)]):  # one letter: "AB" is not A
            raise bad("answer", f"{answer!r} is not one of the option letters "
                                f"{LETTERS[0]}-{LETTERS[len(choices) - 1]}")
        problem = _options_problem(choices, allow_duplicate_options)
        if problem:
            raise bad("choices", problem)
    elif require_mc:
        raise bad("choices", "this stage needs multiple-choice questions (choices is empty)")
    extras = {k: v for k, v in d.items()
              if k not in ("id", "question", "choices", "answer", "source")}
    return Question(str(qid), text, tuple(choices), answer, str(d.get("source", "")), extras,
                    file=file, line=line)


def _options_problem(choices: Sequence[str], allow_duplicates: bool) -> str | None:
    """Why these options cannot be told apart, or None. Texts compare after Unicode (NFKC)
    and whitespace normalisation, case kept: "BbEe" and "BBEe" are different answers."""
    first: dict[str, int] = {}
    for i, text in enumerate(choices):
        key = " ".join(unicodedata.normalize("NFKC", text).split())
        if not key:
            return f"option {LETTERS[i]} is empty"
        if key in first and not allow_duplicates:
            shown = key if len(key) <= 60 else key[:57] + "..."
            return (f"options {LETTERS[first[key]]} and {LETTERS[i]} are the same text "
                    f"({shown!r}); fix the file, or set allow_duplicate_options: true "
                    "on its source to keep such items")
        first.setdefault(key, i)
    return None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """``(line number, parsed JSON value)`` for each non-blank line, strictly: a missing
    file, a line over 1 MiB, non-UTF-8 bytes or invalid JSON is an error naming the line."""
    from headsurgeon.core.inputs import open_input

    path = Path(path)
    name = str(path)
    fh = open_input(path, what="jsonl file")  # a regular file: never a FIFO or /dev/zero
    with fh:
        for lineno, raw in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise ValidationError(f"line longer than {MAX_LINE_BYTES} bytes", file=name,
                                      line=lineno)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValidationError(f"not UTF-8 (byte {exc.start})", file=name,
                                      line=lineno) from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise ValidationError(f"invalid JSON: {getattr(exc, 'msg', exc)}", file=name,
                                      line=lineno) from None
            yield lineno, record


def read_jsonl(path: str | Path, *, limit: int | None = None,
               allow_duplicate_options: bool = False) -> list[Question]:
    """Read a jsonl file of the shared schema, strictly (bad line -> error naming it)."""
    name = str(Path(path))
    out: list[Question] = []
    seen: set[str] = set()
    for lineno, record in iter_jsonl(path):
        q = question_from_dict(record, file=name, line=lineno,
                               allow_duplicate_options=allow_duplicate_options)
        if q.id in seen:
            raise ValidationError(f"duplicate id {q.id!r}", file=name, line=lineno,
                                  field="id")
        seen.add(q.id)
        out.append(q)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValidationError("contains no questions", file=name)
    return out


def require_mc(questions: Sequence[Question], what: str) -> list[Question]:
    mc = [q for q in questions if q.is_mc]
    if not mc:
        raise ValidationError("no multiple-choice questions (every item has empty choices)",
                              field=what)
    return mc


def merge_sources(sources: Sequence[tuple[str, Sequence[Question]]], role: str
                  ) -> list[Question]:
    """The questions of one recipe role (``data.train`` ...) from all its sources, in order.
    ``sources``: ``(label, questions)`` per source, the label (``data.train.1``) naming a
    source whose items carry no file. An id met twice is an error naming both places (a
    second file's items used to vanish behind the first's)."""
    first: dict[str, tuple[str, Question]] = {}
    out: list[Question] = []
    for label, questions in sources:
        for q in questions:
            if q.id in first:
                where_label, prev = first[q.id]
                where = f"{prev.file}:{prev.line}" if prev.file else where_label
                msg = (f"duplicate id {q.id!r} (also {where}); ids must be unique across "
                       f"the sources of {role}")
                if q.file:
                    raise ValidationError(msg, file=q.file, line=q.line, field="id")
                raise ValidationError(msg, field=label)
            first[q.id] = (label, q)
            out.append(q)
    return out


def check_disjoint(sets: dict[str, Iterable[Question]]) -> None:
    """Fail loudly when two stages (e.g. train and eval) share a question id or text."""
    names = list(sets)
    keyed = {n: {(q.id): q for q in sets[n]} for n in names}
    texts = {n: {q.question.strip().lower() for q in sets[n]} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = keyed[a].keys() & keyed[b].keys()
            if not common:
                common = texts[a] & texts[b]
            if common:
                example = sorted(common)[0]
                raise ValidationError(f"{a} and {b} data overlap in {len(common)} question(s), "
                                      f"e.g. {example!r}; they must be disjoint",
                                      field=f"data.{b}")


def shuffled(questions: Sequence[Question], seed: int) -> list[Question]:
    out = list(questions)
    random.Random(seed).shuffle(out)
    return out


def data_hash(questions: Iterable[Question]) -> str:
    h = hashlib.sha256()
    for q in questions:
        h.update(json.dumps(q.to_dict(), sort_keys=True).encode())
    return "sha256:" + h.hexdigest()
