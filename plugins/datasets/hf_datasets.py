"""``{name: hf, path: ..., config: ..., split: ..., fields: {...}, limit: N}``: a Hugging Face
``datasets`` dataset, loaded OFFLINE (nothing is ever downloaded).

``path`` may be a directory written by ``save_to_disk``, a local data file (``.json``,
``.jsonl``, ``.csv``, ``.parquet``, ``.arrow``), a local dataset directory of data files,
or a Hub id that is already in the local ``datasets`` cache.

Rows are mapped to questions; the columns are found automatically or named in
``fields`` (``question``, ``choices``, ``answer``, ``id``):
- ARC / OpenBookQA: ``choices: {text: [...], label: [...]}`` + ``answerKey`` ("C" or "3");
- MMLU: ``choices: [...]`` + integer ``answer`` (also a letter, or the option text);
- HellaSwag-like: ``endings`` + ``label``;
- plain question / answer (open-ended, ``choices: []``): a string or number; TriviaQA's
  ``{value, aliases}`` keeps the aliases; GSM8K's ``"... #### 72"`` keeps ``72`` and the
  worked solution as ``solution``.
Errors name the dataset and the row (as the line number, counting from 1).
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from headsurgeon.core.errors import ValidationError
from headsurgeon.data.questions import LETTERS, question_from_dict

INSTALL = "pip install 'headsurgeon[hf]'"
DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet",
                 ".arrow": "arrow"}
QUESTION_KEYS = ("question", "question_stem", "query", "problem", "prompt", "input", "ctx",
                 "text")
CHOICE_KEYS = ("choices", "options", "endings")
ANSWER_KEYS = ("answerKey", "answer", "label", "answer_idx", "gold", "target", "output")
ID_KEYS = ("id", "question_id", "qid", "uid", "idx", "ind")


class Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: Optional[str] = Field(None, description="column of the question text")
    choices: Optional[str] = Field(None, description="column of the options")
    answer: Optional[str] = Field(None, description="column of the answer")
    id: Optional[str] = Field(None, description="column of the id (default: file-row)")


class HFDataset:
    name = "hf"
    requires = {"datasets": "headsurgeon[hf]"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str = Field(min_length=1, description=(
            "save_to_disk directory, data file, dataset directory or cached Hub id"))
        config: Optional[str] = Field(None, description="dataset configuration (subset)")
        split: Optional[str] = Field(None, description="needed when there are several")
        fields: Fields = Field(default_factory=Fields, description=(
            "column names, where automatic detection fails"))
        limit: Optional[int] = Field(None, ge=1, description="read at most this many rows")
        allow_duplicate_options: bool = Field(False, description=(
            "keep rows two of whose options are the same text; by default such a row is "
            "an error naming it"))

    def load(self, params: "HFDataset.Params"):
        rows, label = load_rows(params)
        out, seen = [], set()
        for i, row in enumerate(rows, 1):
            record = row_to_record(row, params.fields, index=i, file=label)
            q = question_from_dict(record, file=label, line=i,
                                   allow_duplicate_options=params.allow_duplicate_options)
            if q.id in seen:
                raise ValidationError(f"duplicate id {q.id!r}", file=label, line=i, field="id")
            seen.add(q.id)
            out.append(q)
            if params.limit is not None and len(out) >= params.limit:
                break
        if not out:
            raise ValidationError("contains no rows", file=label)
        return out


@contextlib.contextmanager
def _offline():
    """Force offline mode for the duration of one load (restored afterwards)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield datasets
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _looks_local(p: str) -> bool:
    return (p.startswith((".", "/", "~", "$")) or Path(p).suffix.lower() in DATA_SUFFIXES
            or p.count("/") > 1)


def load_rows(params: "HFDataset.Params"):
    """The rows (an indexable ``datasets.Dataset``) and a label naming them in errors."""
    from headsurgeon.data.datasets import expand_path

    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ValidationError(f"the Hugging Face 'datasets' package is not installed; "
                              f"install it with: {INSTALL}") from None
    path = expand_path(params.path)
    label = f"{params.path}[{params.split}]" if params.split else params.path
    with _offline() as ds:
        try:
            if path.is_dir() and ((path / "dataset_dict.json").is_file()
                                  or (path / "state.json").is_file()):
                data = ds.load_from_disk(str(path))
            elif path.is_file():
                builder = DATA_SUFFIXES.get(path.suffix.lower())
                if builder is None:
                    raise ValidationError(f"unsupported file type {path.suffix!r} (known: "
                                          f"{', '.join(DATA_SUFFIXES)})", file=params.path)
                data = ds.load_dataset(builder, data_files=str(path))
            elif path.exists() or _looks_local(params.path):
                if not path.exists():
                    raise ValidationError("no such file or directory", file=params.path)
                data = ds.load_dataset(str(path), params.config)
            else:  # a Hub id: the local datasets cache only
                data = ds.load_dataset(params.path, params.config)
        except ValidationError:
            raise
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
            msg = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ValidationError(f"cannot load offline ({type(exc).__name__}: {msg}); "
                                  "headsurgeon never downloads: pass a local file, a "
                                  "save_to_disk directory or an id already in the local "
                                  "datasets cache", file=params.path) from None
        if isinstance(data, ds.DatasetDict):
            splits = list(data)
            if params.split is None:
                if len(splits) != 1:
                    raise ValidationError(f"has splits {', '.join(splits)}; choose one with "
                                          "split:", file=params.path, field="split")
                label = f"{params.path}[{splits[0]}]"
                data = data[splits[0]]
            elif params.split not in data:
                raise ValidationError(f"no split {params.split!r} (has: {', '.join(splits)})",
                                      file=params.path, field="split")
            else:
                data = data[params.split]
        elif params.split and data.split is not None and params.split != str(data.split):
            raise ValidationError(f"is a single split ({data.split}); no split "
                                  f"{params.split!r}", file=params.path, field="split")
    return data, label


def _find(row: dict, override: Optional[str], keys: tuple[str, ...], what: str, *,
          file: str, index: int, required: bool = True):
    if override is not None:
        if override not in row:
            raise ValidationError(f"column {override!r} (fields.{what}) not found; columns: "
                                  f"{', '.join(row)}", file=file, line=index, field=what)
        return override
    for k in keys:
        if k in row and row[k] is not None:
            return k
    if required:
        raise ValidationError(f"no {what} column found (looked for {', '.join(keys)}); name "
                              f"it with fields.{what}", file=file, line=index, field=what)
    return None


def _choices(value, *, file: str, index: int) -> tuple[list[str], list[str] | None]:
    """Option texts and, for ARC-style dicts, their labels."""
    if isinstance(value, dict):
        texts, labels = value.get("text"), value.get("label")
        if not isinstance(texts, list):
            raise ValidationError("choices is a mapping without a 'text' list", file=file,
                                  line=index, field="choices")
        return [str(t) for t in texts], ([str(x) for x in labels]
                                         if isinstance(labels, list) else None)
    if isinstance(value, list):
        return [str(t) for t in value], None
    raise ValidationError(f"choices must be a list or {{text, label}}, not "
                          f"{type(value).__name__}", file=file, line=index, field="choices")


def _letter(answer, texts: list[str], labels: list[str] | None, *, file: str, index: int):
    """The answer letter from a label (ARC), an index (MMLU, HellaSwag), a letter or the
    option text itself."""
    n = len(texts)

    def out_of_range(i):
        return ValidationError(f"answer index {i} is outside the {n} options", file=file,
                               line=index, field="answer")

    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    if isinstance(answer, bool) or answer is None:
        pass
    elif labels is not None and str(answer).strip() in labels:
        return LETTERS[labels.index(str(answer).strip())]
    elif isinstance(answer, int):
        if 0 <= answer < n:
            return LETTERS[answer]
        raise out_of_range(answer)
    elif isinstance(answer, str):
        key = answer.strip()
        if key in texts:
            return LETTERS[texts.index(key)]
        if len(key.strip("()")) == 1 and key.strip("()").upper() in LETTERS[:n]:
            return key.strip("()").upper()
        if key.isdigit():
            if int(key) < n:
                return LETTERS[int(key)]
            raise out_of_range(int(key))
    raise ValidationError(f"answer {answer!r} is not an option index, letter, label or "
                          "option text", file=file, line=index, field="answer")


def row_to_record(row: dict, fields: Fields, *, index: int, file: str) -> dict:
    """One dataset row -> a record of the shared question schema."""
    qk = _find(row, fields.question, QUESTION_KEYS, "question", file=file, index=index)
    ck = _find(row, fields.choices, CHOICE_KEYS, "choices", file=file, index=index,
               required=False)
    ak = _find(row, fields.answer, ANSWER_KEYS, "answer", file=file, index=index)
    ik = _find(row, fields.id, ID_KEYS, "id", file=file, index=index, required=False)
    used = {qk, ck, ak, ik}
    default_id = re.sub(r"[^\w.-]+", "-", Path(file).name).strip("-") + f"-{index - 1}"
    record = {"id": str(row[ik]) if ik else default_id,
              "question": row[qk], "source": f"hf:{file}"}
    answer = row[ak]
    if ck is not None and row[ck]:
        texts, labels = _choices(row[ck], file=file, index=index)
        record["choices"] = texts
        record["answer"] = _letter(answer, texts, labels, file=file, index=index)
    else:
        record["choices"] = []
        if isinstance(answer, dict) and "value" in answer:  # TriviaQA
            if answer.get("aliases"):
                record["aliases"] = list(answer["aliases"])
            answer = answer["value"]
        elif isinstance(answer, list) and answer:
            record["aliases"] = [str(a) for a in answer]
            answer = answer[0]
        if isinstance(answer, str) and "####" in answer:  # GSM8K
            record["solution"] = answer
            answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
        record["answer"] = answer
    for k, v in row.items():  # keep small scalar extras (subject, ...)
        if k not in used and k not in record and isinstance(v, (str, int, float, bool)):
            record[k] = v
    return record


DATASETS = [HFDataset]
