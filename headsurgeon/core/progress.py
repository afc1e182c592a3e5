"""Every progress bar and progress message of the tool, in one place.

On a terminal a bar is tqdm's. Anywhere else (a log file, a pipe, CI) a bar is a plain
line now and then: at most ``LINES`` lines while it runs, no two within ``MIN_SECONDS``
(``--verbose`` drops that gap), then one closing line; never a carriage return or an ANSI
code. ``--quiet`` leaves errors, warnings and the final summary: no bars, no notes.
``TQDM_DISABLE`` turns bars off; ``NO_COLOR`` (or a stderr that is not a terminal) strips
the colours from transformers' log records (its load report). ``--quiet`` and
``--verbose`` also set transformers' verbosity (error / info).
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from typing import Any, Iterable, Optional

QUIET, NORMAL, VERBOSE = 0, 1, 2
LINES = 10  # a plain-line bar prints at most this many lines before its closing one
MIN_SECONDS = 5.0  # and leaves at least this long between them (not with --verbose)
ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[78])")

_level = NORMAL
_env_before: dict[str, Optional[str]] = {}  # what configure() changed, to undo next time
_bars_disabled_by_us = False
_verbosity_set_by_us = False
_factory_installed = False


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed, replaced or odd streams
        return False


def colour_allowed(stream=None) -> bool:
    """Colours only on a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""
    return not os.environ.get("NO_COLOR") and is_tty(stream if stream is not None
                                                     else sys.stderr)


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    """Set the output level for this process (the CLI calls it once per command).
    Imports nothing heavy: transformers is told through its environment variables, or
    through its API when it is already imported."""
    global _level
    _level = QUIET if quiet else VERBOSE if verbose else NORMAL
    _install_record_filter()
    _tame_transformers()


def progress_note(message: str, *, err: bool = True) -> None:
    """A progress message (a stage starting, a model evaluated): hidden by ``--quiet``;
    stderr unless ``err=False``."""
    if _level > QUIET:
        _write(message, sys.stderr if err else sys.stdout)


def _write(text: str, stream) -> None:
    if not colour_allowed(stream):
        text = ANSI.sub("", text)
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):  # a closed pipe must not fail the run
        pass


def progress_bar(iterable: Optional[Iterable] = None, *, desc: Optional[str] = None,
                 total: Optional[int] = None, unit: str = "it", initial: int = 0,
                 disable: bool = False, leave: bool = False, file=None):
    """The one constructor of progress bars (tqdm's arguments, tqdm's methods)."""
    stream = file if file is not None else sys.stderr
    off = disable or _level == QUIET or _flag("TQDM_DISABLE")
    if not off and is_tty(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial,
                    leave=leave, file=stream)
    return LineBar(iterable, desc=desc, total=total, unit=unit, initial=initial,
                   stream=stream, enabled=not off)


class LineBar:
    """A progress bar for logs: whole lines at step intervals, nothing else."""

    def __init__(self, iterable=None, *, desc=None, total=None, unit="it", initial=0,
                 stream=None, enabled=True, clock=time.monotonic):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "progress", total, unit
        self.n = self.shown = initial
        self.every = max(1, math.ceil(total / LINES)) if total else LINES
        self.stream, self.enabled, self.clock = stream, enabled, clock
        self.t0 = self.last = clock()
        self.postfix, self.closed = "", False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if not self.enabled or self.closed or self.n == self.total:
            return  # the closing line reports the end
        if self.n // self.every > before // self.every and (
                _level == VERBOSE or self.clock() - self.last >= MIN_SECONDS):
            self._line()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.enabled and self.n != self.shown:
            self._line()

    def _line(self) -> None:
        now = self.clock()
        unit = "" if self.unit == "it" else f" {self.unit}s"
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        tail = f" {self.postfix}" if self.postfix else ""
        _write(f"{self.desc}: {self.n}{of}{unit}{pct} {now - self.t0:.1f}s{tail}", self.stream)
        self.shown, self.last = self.n, now


def _install_record_filter() -> None:
    """Strip ANSI codes from transformers' log records (its load report is coloured even
    in a file) unless colours are allowed; applies whenever transformers is imported."""
    global _factory_installed
    if _factory_installed:
        return
    _factory_installed = True
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        if (record.name.startswith("transformers") and "\x1b" in str(record.msg)
                and not colour_allowed()):
            record.msg, record.args = ANSI.sub("", record.getMessage()), ()
        return record

    logging.setLogRecordFactory(factory)


def _tame_transformers() -> None:
    """--quiet: errors only; --verbose: info logs; no weight-loading bars off a terminal."""
    global _bars_disabled_by_us, _verbosity_set_by_us
    for key, old in _env_before.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    _env_before.clear()
    verbosity = {QUIET: "error", VERBOSE: "info"}.get(_level)
    bars_off = _level == QUIET or not is_tty(sys.stderr) or _flag("TQDM_DISABLE")
    wanted = {"TRANSFORMERS_VERBOSITY": verbosity,
              "HF_HUB_DISABLE_PROGRESS_BARS": "1" if bars_off and
              "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ else None}
    for key, value in wanted.items():
        if value is not None:
            _env_before[key] = os.environ.get(key)
            os.environ[key] = value
    tf_logging = sys.modules.get("transformers.utils.logging")
    if tf_logging is None:
        return  # it reads the variables when it is imported
    if verbosity is not None or _verbosity_set_by_us:
        default = getattr(tf_logging, "_get_default_logging_level", lambda: logging.WARNING)
        tf_logging.set_verbosity({"error": logging.ERROR, "info": logging.INFO}.get(
            verbosity) or default())  # back to the environment's level
        _verbosity_set_by_us = verbosity is not None
    if bars_off and tf_logging.is_progress_bar_enabled():
        tf_logging.disable_progress_bar()
        _bars_disabled_by_us = True
    elif not bars_off and _bars_disabled_by_us:
        tf_logging.enable_progress_bar()
        _bars_disabled_by_us = False
