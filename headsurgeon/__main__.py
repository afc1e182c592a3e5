"""``python -m headsurgeon`` (and ``accelerate launch -m headsurgeon train ...``)."""
from .cli import main

main()
