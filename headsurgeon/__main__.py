"""``python -m headsurgeon`` (and ``accelerate launch -m headsurgeon train ...``)."""
from headsurgeon.cli import main

main()
