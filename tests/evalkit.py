"""Fixtures shared by the eval tests (imported by tests/test_eval*.py, tests/test_judges.py)."""
from pathlib import Path

import pytest
import torch


def build_eval_tiny(arch: str, out: Path, *, scale: float = 3.0) -> Path:
    """A tiny random model whose weights are scaled up, so its next-token distributions
    are peaked (greedy decoding has no near-ties) and it is a usable judge/generator."""
    from transformers import AutoModelForCausalLM

    from headsurgeon.model.tiny import build_tiny

    build_tiny(arch, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name and "ln" not in name:
                p.mul_(scale)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def eval_tiny_dir(tmp_path_factory):
    return build_eval_tiny("llama", tmp_path_factory.mktemp("evaltiny") / "llama")


@pytest.fixture
def one_thread():
    """Tiny models run many small ops: one thread is faster, and far faster when the two
    cores are shared (OpenMP threads wait on each other in barriers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(eval_tiny_dir):
    """(model, tokenizer) of the session's tiny eval model."""
    from headsurgeon.model.sources import load_model

    model, tok, _ = load_model(str(eval_tiny_dir))
    return model, tok
