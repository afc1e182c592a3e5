"""The self-knowledge probe: AUC, cross-validation by item, and heads.json's entry."""

import pytest
import torch

from headsurgeon.locate.self_knowledge import auc, cv_auc, fit_predict, last_token_states

from evalkit import eval_tiny_dir, one_thread  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auc_values():
    assert auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert auc([0.5, 0.5], [1, 0]) == 0.5
    assert auc([0.3, 0.7, 0.5, 0.1], [1, 0, 1, 0]) == 0.5
    assert auc([1.0], [1]) is None


def _pairs(n, dim, signal, seed=0):
    """n items, each a (right, wrong) pair sharing an item offset; the label is carried by
    ``signal`` along feature 0 only."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randn(n, dim, generator=g) * 3
    x, y, groups = [], [], []
    for i in range(n):
        for label in (1, 0):
            v = offset[i] + torch.randn(dim, generator=g)
            v[0] += signal * (1 if label else -1)
            x.append(v)
            y.append(label)
            groups.append(i)
    return torch.stack(x), torch.tensor(y), groups


def test_probe_separates_signal_and_not_noise():
    x, y, groups = _pairs(40, 16, signal=4.0)
    assert cv_auc(x, y, groups, folds=5, l2=1.0) > 0.9
    x, y, groups = _pairs(40, 16, signal=0.0)
    assert 0.3 < cv_auc(x, y, groups, folds=5, l2=1.0) < 0.7
    assert cv_auc(x[:12], y[:12], groups[:12], folds=5, l2=1.0) is None  # 6 items: too few


def test_pairs_never_straddle_folds():
    """An item's two rows share its offset: a probe that could memorise an item's offset
    from one row would score its pair. Folds by item leave only the real signal; folds by
    row would not (so the grouping is what keeps the AUC honest)."""
    x, y, groups = _pairs(30, 8, signal=0.0, seed=1)
    seen = []
    import headsurgeon.locate.self_knowledge as sk

    real = sk.fit_predict

    def spy(xtr, ytr, xte, l2, iters=100):
        seen.append((xtr, xte))
        return real(xtr, ytr, xte, l2, iters)

    sk.fit_predict = spy
    try:
        cv_auc(x, y, groups, folds=5, l2=1.0)
    finally:
        sk.fit_predict = real
    for xtr, xte in seen:
        tr = {tuple(r.tolist()) for r in xtr}
        assert not any(tuple(r.tolist()) in tr for r in xte)
        test_items = {groups[i] for i in range(len(groups))
                      if tuple(x[i].tolist()) in {tuple(r.tolist()) for r in xte}}
        train_items = {groups[i] for i in range(len(groups))
                       if tuple(x[i].tolist()) in tr}
        assert not test_items & train_items


def test_fit_predict_is_deterministic():
    x, y, _ = _pairs(20, 6, signal=1.0)
    a, b = fit_predict(x, y, x, 1.0), fit_predict(x, y, x, 1.0)
    assert torch.equal(a, b)


def test_last_token_states_equal_plain_forward(eval_tiny_dir):
    from headsurgeon.data.dialogue import encode, render
    from headsurgeon.model.sources import load_model

    model, tok, _ = load_model(str(eval_tiny_dir))
    convs = [[{"role": "user", "content": "What is 1 plus 1?"}],
             [{"role": "user", "content": "A much longer question about the answer?"}]]
    states = last_token_states(model, tok, convs, batch_size=2)
    assert states.shape == (2, model.config.num_hidden_layers, model.config.hidden_size)
    for i, c in enumerate(convs):
        with torch.no_grad():
            hs = model(torch.tensor([encode(tok, render(tok, c))]),
                       output_hidden_states=True).hidden_states
        for layer in range(model.config.num_hidden_layers):
            assert torch.allclose(states[i, layer], hs[layer + 1][0, -1], atol=1e-4)


def test_locate_writes_self_knowledge(tmp_path, eval_tiny_dir):
    import json

    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.locate.run import locate

    from train_helpers import write_questions

    q = write_questions(tmp_path / "loc.jsonl", 24)
    rpath = tmp_path / "r.yaml"
    rpath.write_text(f"""name: sk
model: {{source: {eval_tiny_dir}}}
data:
  locate: [{{name: jsonl, path: {q}}}]
locate: {{method: attribution, n_probes: 4, top_k: 1, k_max: 2, knockout_random_sets: 1,
         confirm_top: 0, self_knowledge: {{n_items: 24, by: either, folds: 2}}}}
""")
    out = locate(load_recipe(rpath), tmp_path / "heads.json", progress=False)
    sk = json.loads(out.read_text())["self_knowledge"]
    assert sk["available"] and sk["n_items"] == 24 and sk["known_by"] == "either"
    layers = 3  # the tiny llama
    for group in ("known", "unknown"):
        aucs = sk["by_layer"][group]
        assert len(aucs) == layers
        assert all(a is None or 0 <= a <= 1 for a in aucs)
    n_known = sk["n_known"]
    assert (sk["best"]["known"] is None) == (n_known < 10)
    # known = letter-invariant: the right option text under all 4 rotations of its options
    from headsurgeon.data.datasets import load_stage
    from headsurgeon.model.letter_invariant import invariant_beliefs, invariant_known
    from headsurgeon.model.sources import load_model

    recipe = load_recipe(rpath)
    model, tok, _ = load_model(recipe.model.source)
    qs = load_stage(recipe.data.locate, "locate", seed=0, mc_only=True, balance=True)[:24]
    beliefs = invariant_beliefs(model, tok, qs, recipe.templates,
                                readings=("letter", "choice_text"), permutations=4)
    assert sk["permutations"] == 4 and sk["permutation_share"] == 1.0
    assert n_known == len(invariant_known(beliefs, "either"))
    best = sk["best"]["known"]
    assert sk["reachable"] == (None if best is None else best["auc"] >= 0.6)


def test_an_unreachable_ceiling_is_said_in_the_report_and_the_verdict(tmp_path):
    import json

    from headsurgeon.report.report import ceiling_text
    from headsurgeon.report.verdict import format_verdict

    sk = {"available": True, "n_known": 31, "reachable": False,
          "best": {"known": {"auc": 0.55, "layer": 12}, "unknown": None}}
    text = ceiling_text({"self_knowledge": sk})
    assert "AUC 0.550 on 31 known items (layer 12" in text and "out of reach" in text
    assert ceiling_text({"self_knowledge": {**sk, "reachable": True}}) == ""
    assert ceiling_text({}) == ""
    (tmp_path / "heads.json").write_text(json.dumps({"self_knowledge": sk}))
    assert "Selectivity of 0.5 is out of reach for this model" in format_verdict(tmp_path)
