"""``KVRows.prefill``: rows that share prefixes (one chat template and system prompt for
all, one question for each item's rotations) feed each shared prefix once, and every row
still reads what a plain forward of its whole sequence reads, on tiny models of three
architectures (rotary llama, qwen2 with biases, gpt2 with absolute positions)."""
import pytest
import torch

from headsurgeon.data.dialogue import encode
from headsurgeon.model.generation import pad_id
from headsurgeon.model.kvrows import MIN_SHARED, KVRows, shared_runs

from evalkit import build_eval_tiny, one_thread  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")

SYSTEM = "System: you answer questions about capitals and rivers, briefly and well.\n"
ITEMS = ["Q: the capital of France? Options: Paris, Rome",
         "Q: the longest river of Africa? Options: Nile, Congo, Niger"]


def _targets(tok):
    """Two items x three orders of their options, item by item, as rotations come."""
    out = []
    for item in ITEMS:
        stem, opts = item.split(" Options: ")
        names = opts.split(", ")
        for r in range(3):
            order = names[r % len(names):] + names[:r % len(names)]
            out.append(encode(tok, SYSTEM + stem + " Options: " + ", ".join(order) + "\nA:"))
    return out


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def arch_model(request, tmp_path_factory):
    from headsurgeon.model.sources import load_model

    path = build_eval_tiny(request.param, tmp_path_factory.mktemp(request.param) / "m")
    model, tok, _ = load_model(str(path), attn_implementation=None)
    return model, tok


def _alone(model, seq):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].float(), -1)


def test_prefill_reads_what_plain_forwards_read_and_feeds_shared_tokens_once(arch_model):
    model, tok = arch_model
    targets = _targets(tok)
    rows = KVRows(model, pad_id(tok))
    got = rows.prefill(targets)
    for r, seq in enumerate(targets):
        assert torch.allclose(got[r], _alone(model, seq), atol=1e-4), r
    everyone = min(len(t) for t in targets)
    common = next(i for i in range(everyone) if len({t[i] for t in targets}) > 1)
    runs = shared_runs(targets, common, MIN_SHARED)
    assert [(a, b) for a, b, _ in runs] == [(0, 3), (3, 6)]  # each item's orders
    fed = common + sum(d - common for _, _, d in runs) + sum(
        len(t) - runs[r // 3][2] for r, t in enumerate(targets))
    assert rows.fed_tokens == fed < sum(len(t) for t in targets) * 0.75
    # the rows go on like any others: branch back to the shared prefix and score a text
    tail = [t[:-1] + encode(tok, " Paris")[-1:] for t in targets]
    lp, sums = rows.advance(tail, score_from=[len(t) - 1 for t in tail])
    for r, seq in enumerate(tail):
        assert sums[r] == pytest.approx(float(_alone(model, seq[:-1])[seq[-1]]), abs=1e-4)
        assert torch.allclose(lp[r], _alone(model, seq), atol=1e-4)


def test_prefill_without_shared_tokens_or_with_one_row_is_a_plain_advance(arch_model):
    model, tok = arch_model
    seqs = [encode(tok, "Hello there, what is it?"), encode(tok, "Zebras run"),
            encode(tok, "Hello")]
    rows = KVRows(model, pad_id(tok))
    got = rows.prefill(seqs)
    assert rows.fed_tokens == sum(len(s) for s in seqs)
    for r, seq in enumerate(seqs):
        assert torch.allclose(got[r], _alone(model, seq), atol=1e-4)
    one = KVRows(model, pad_id(tok))
    assert torch.allclose(one.prefill(seqs[:1])[0], _alone(model, seqs[0]), atol=1e-4)
    with pytest.raises(ValueError, match="fresh"):
        rows.prefill(seqs)


def test_a_target_that_is_the_shared_prefix_still_reads_its_last_token(arch_model):
    model, tok = arch_model
    long = encode(tok, SYSTEM + "and then some more words")
    short = long[:len(encode(tok, SYSTEM)) - 1]
    rows = KVRows(model, pad_id(tok))
    got = rows.prefill([long, short, long])
    for r, seq in enumerate([long, short, long]):
        assert torch.allclose(got[r], _alone(model, seq), atol=1e-4)


def test_shared_runs():
    a, b = [1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 9]
    c, d = [1, 2, 8, 8, 8, 8, 8], [1, 2, 8, 8, 8, 8, 9]
    assert shared_runs([a, b, c, d], 2, 4) == [(0, 2, 6), (2, 4, 6)]
    assert shared_runs([a, b, c, d], 2, 5) == [(0, 1, 2), (1, 2, 2), (2, 3, 2), (3, 4, 2)]
    assert shared_runs([a, c, b], 2, 4) == [(0, 1, 2), (1, 2, 2), (2, 3, 2)]  # consecutive only
    assert shared_runs([a], 0, 4) == [(0, 1, 0)]
