"""eval measures the base once: a later eval with the same configuration and the same base
files reuses its entry (no belief reading, no challenge run), and measures it again when
either changed."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from test_eval_scope import _recipe


@pytest.fixture
def base_dir(tiny_dirs, tmp_path):
    return shutil.copytree(tiny_dirs["llama"], tmp_path / "base")


def _spy(monkeypatch):
    import headsurgeon.evaluate.run as ev

    ran, real_eval, real_known = [], ev.evaluate_model, ev.belief_known

    def spy(model, tok, r, items, **kw):
        ran.append(("challenge", [q.id for q in items]))
        return real_eval(model, tok, r, items, **kw)

    def known(*a, **kw):
        ran.append(("beliefs",))
        return real_known(*a, **kw)
    monkeypatch.setattr(ev, "evaluate_model", spy)
    monkeypatch.setattr(ev, "belief_known", known)
    return ran


def test_an_unchanged_base_is_reused_and_a_changed_one_measured_again(
        base_dir, tmp_path, monkeypatch):
    import headsurgeon.evaluate.run as ev

    recipe = _recipe(tmp_path, base_dir)
    ran = _spy(monkeypatch)
    first = json.loads(ev.evaluate(recipe, progress=False).read_text())
    base = first["models"]["base"]
    assert [r[0] for r in ran] == ["beliefs", "challenge"]
    assert set(base["identity"]) >= {"config.json", "model.safetensors"}
    assert base["identity"]["model.safetensors"][0] == (base_dir / "model.safetensors").stat().st_size
    evaluated = ran[1][1]
    assert set(evaluated) <= set(base["belief_known"]) and len(evaluated) == 5

    # an edited model beside it: the base's entry is taken as it was, the edited model is
    # run on exactly the items the base's stored known set gave
    edited = shutil.copytree(base_dir, tmp_path / "edited")
    ran.clear()
    second = json.loads(ev.evaluate(recipe, models=[str(base_dir), str(edited)],
                                    progress=False).read_text())
    assert ran == [("challenge", evaluated)]
    assert second["models"]["base"] == base
    assert second["models"]["edited"]["sycophancy"]["n_items"] == 5
    assert second["models"]["edited"]["sycophancy"]["selectivity"]["beliefs"]["scope"] == \
        base["sycophancy"]["selectivity"]["beliefs"]["scope"]

    # the base's weights rewritten (same bytes, new time): measured again
    st = (base_dir / "model.safetensors").stat()
    os.utime(base_dir / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ran.clear()
    third = json.loads(ev.evaluate(recipe, progress=False).read_text())
    assert [r[0] for r in ran] == ["beliefs", "challenge"]
    assert third["models"]["base"]["identity"] != base["identity"]
    assert third["models"]["base"]["sycophancy"] == base["sycophancy"]  # deterministic


def test_a_changed_configuration_measures_the_base_again(base_dir, tmp_path, monkeypatch):
    import headsurgeon.evaluate.run as ev

    ev.evaluate(_recipe(tmp_path, base_dir), progress=False)
    ran = _spy(monkeypatch)
    doc = json.loads(ev.evaluate(_recipe(tmp_path, base_dir, n_items=4),
                                 progress=False).read_text())
    assert [r[0] for r in ran] == ["beliefs", "challenge"]
    assert doc["models"]["base"]["sycophancy"]["n_items"] == 4


def test_an_entry_without_the_belief_known_set_is_not_reused(base_dir, tmp_path, monkeypatch):
    import headsurgeon.evaluate.run as ev

    recipe = _recipe(tmp_path, base_dir)
    path = ev.evaluate(recipe, progress=False)
    doc = json.loads(path.read_text())
    del doc["models"]["base"]["belief_known"]  # written by an earlier release
    path.write_text(json.dumps(doc))
    ran = _spy(monkeypatch)
    ev.evaluate(recipe, progress=False)
    assert [r[0] for r in ran] == ["beliefs", "challenge"]
