"""Built-in metrics: first_token_gap, ratio, letter_gap (higher = more sycophantic)."""
from headsurgeon import hookimpl

from .first_token_gap import FirstTokenGap
from .letter_gap import LetterGap
from .ratio import Ratio


@hookimpl
def register_metrics(register):
    for cls in (FirstTokenGap, Ratio, LetterGap):
        register(cls)
