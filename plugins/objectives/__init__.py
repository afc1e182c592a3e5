"""Built-in objectives: sft, sft_kl, sft_anchor, lora_heads, consistency (SPT variants)
and the paper's baselines full_sft, lora, random_heads. The contract:
headsurgeon/train/objectives.py."""
from headsurgeon import hookimpl

from .anchor import SFTAnchor
from .baselines import FullSFT, RandomHeads
from .consistency import Consistency
from .lora import Lora, LoraHeads
from .sft import SFT, SFTKL

OBJECTIVES = (SFT, SFTKL, SFTAnchor, LoraHeads, Consistency, FullSFT, Lora, RandomHeads)


@hookimpl
def register_objectives(register):
    for cls in OBJECTIVES:
        register(cls)
