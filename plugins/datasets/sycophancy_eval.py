"""``{name: sycophancy_eval, path: are_you_sure.jsonl, limit: N}``: SycophancyEval's "are you
sure?" file (Sharma et al. 2023, github.com/meg-tong/sycophancy-eval).

Each line is ``{"prompt": [{"type": "human", "content": ...}, ...], "base": {...},
"metadata": {"prompt_template": ...}}``. ``base`` holds ``dataset`` and ``question``;
multiple-choice items add ``answers`` (``"(A) ...\\n(B) ..."``) and ``correct_letter``,
free-form ones ``correct_answer`` and/or ``answer`` (a list of accepted answers).
Multiple-choice items become questions with those options and letter; free-form ones
``choices: []`` with the gold answer (all accepted answers in ``aliases``). The file has
no ids: an id is ``syc-<dataset>-<hash of question and options>``, and a repeated item is
read once. ``kind`` keeps only ``mc`` or ``open`` items; ``datasets`` keeps only the named
``base.dataset`` values (e.g. ``[mmlu_mc_cot, truthful_qa_mc]``).
"""
from __future__ import annotations

import hashlib
import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from headsurgeon.core.errors import ValidationError
from headsurgeon.data.questions import iter_jsonl, question_from_dict

_OPTION_AT_LINE = re.compile(r"(?m)^[ \t]*\(([A-Z])\)[ \t]?")
_OPTION_ANYWHERE = re.compile(r"\(([A-Z])\)[ \t]?")


def parse_options(answers: str) -> list[str]:
    """``"(A) x\\n(B) y"`` -> ``["x", "y"]``; letters must run A, B, C ... in order."""
    if "\n" not in answers and "\\n" in answers:
        answers = answers.replace("\\n", "\n")
    for pattern in (_OPTION_AT_LINE, _OPTION_ANYWHERE):
        marks = list(pattern.finditer(answers))
        letters = "".join(m.group(1) for m in marks)
        if len(marks) >= 2 and letters == "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(marks)]:
            ends = [m.start() for m in marks[1:]] + [len(answers)]
            return [answers[m.end():e].strip() for m, e in zip(marks, ends)]
    return []


class SycophancyEvalDataset:
    name = "sycophancy_eval"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str = Field(min_length=1, description="SycophancyEval's are_you_sure.jsonl")
        limit: Optional[int] = Field(None, ge=1, description="read at most this many questions")
        kind: Literal["all", "mc", "open"] = Field("all", description=(
            "keep multiple-choice items, open-ended ones, or both"))
        datasets: Optional[list[str]] = Field(None, description=(
            "keep only these base.dataset values (default: all)"))
        allow_duplicate_options: bool = Field(False, description=(
            "keep items two of whose options are the same text; by default such an item "
            "is an error naming its line"))

    def load(self, params: "SycophancyEvalDataset.Params"):
        from headsurgeon.data.datasets import expand_path

        path = expand_path(params.path)
        name = str(path)
        out, seen = [], set()
        for lineno, record in iter_jsonl(path):
            q = record_to_question(record, file=name, line=lineno,
                                   allow_duplicate_options=params.allow_duplicate_options)
            if params.kind != "all" and (params.kind == "mc") != q.is_mc:
                continue
            if params.datasets is not None and q.extras["dataset"] not in params.datasets:
                continue
            if q.id in seen:
                continue
            seen.add(q.id)
            out.append(q)
            if params.limit is not None and len(out) >= params.limit:
                break
        if not out:
            raise ValidationError("contains no usable questions" + (
                f" (kind={params.kind}, datasets={params.datasets})"
                if params.kind != "all" or params.datasets else ""), file=name)
        return out


def record_to_question(record, *, file: str, line: int, allow_duplicate_options: bool = False):
    def bad(fld: str, msg: str) -> ValidationError:
        return ValidationError(msg, file=file, line=line, field=fld)

    if not isinstance(record, dict):
        raise bad("", "each line must be a JSON object")
    base = record.get("base")
    if not isinstance(base, dict):
        raise bad("base", "required object is missing (are_you_sure.jsonl format)")
    question = base.get("question")
    if not isinstance(question, str) or not question.strip():
        raise bad("base.question", "must be a non-empty string")
    dataset = str(base.get("dataset") or "unknown")
    meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    extras = {"dataset": dataset}
    if isinstance(meta.get("prompt_template"), str):
        extras["prompt_template"] = meta["prompt_template"]

    answers, letter = base.get("answers"), base.get("correct_letter")
    if isinstance(answers, str) and answers.strip() and letter:
        choices = parse_options(answers)
        if not choices:
            raise bad("base.answers", "no options like '(A) ...' found")
        answer = str(letter).strip().strip("()")
        if base.get("correct_answer") is not None:
            extras["correct_answer"] = str(base["correct_answer"])
        key = question + "\n" + "\n".join(choices)
    else:
        choices = []
        accepted = base.get("answer")
        if isinstance(accepted, str):
            accepted = [accepted]
        accepted = [str(a) for a in accepted] if isinstance(accepted, list) else []
        gold = base.get("correct_answer")
        answer = str(gold) if gold is not None and str(gold).strip() else (
            accepted[0] if accepted else None)
        if answer is None:
            raise bad("base.correct_answer", "free-form item without correct_answer or "
                                             "answer")
        if accepted:
            extras["aliases"] = accepted
        if base.get("incorrect_answer") is not None:
            extras["incorrect_answer"] = str(base["incorrect_answer"])
        key = question + "\n=" + answer
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    rec = {"id": f"syc-{dataset}-{digest}", "question": question, "choices": choices,
           "answer": answer, "source": f"sycophancy_eval/{dataset}", **extras}
    try:
        return question_from_dict(rec, file=file, line=line,
                                  allow_duplicate_options=allow_duplicate_options)
    except ValidationError as exc:  # name the field of this format, not of ours
        fld = {"answer": "base.correct_letter" if choices else "base.correct_answer",
               "choices": "base.answers", "question": "base.question"}.get(exc.field or "",
                                                                         exc.field)
        raise bad(fld, exc.detail) from None


DATASETS = [SycophancyEvalDataset]
