"""One device/dtype policy for every stage (headsurgeon.model.placement), exercised on the
CPU with fake accelerators: resolution, the CLI override, errors, device-map splits."""
from types import SimpleNamespace

import pytest
import torch

import headsurgeon.core.recipe as recipe_mod
from headsurgeon.cli import main
from headsurgeon.core.errors import ValidationError
from headsurgeon.model.placement import (Accelerators, Placement, recipe_placement, resolve,
                                         split_map, weights_bytes, with_device)

from train_helpers import available_plugin_fields, load, recipe_text, write_questions

NONE = Accelerators()
ONE_GPU = Accelerators(n_cuda=1, free=(80 << 30,))
TWO_GPUS = Accelerators(n_cuda=2, free=(40 << 30, 40 << 30))


def section(**kw):
    return SimpleNamespace(**{"device": "auto", "dtype": "auto", "max_memory": None, **kw})


def test_auto_is_the_accelerator_when_present_else_cpu():
    assert resolve(section(), accelerators=NONE) == Placement("cpu", "float32")
    p = resolve(section(), accelerators=ONE_GPU)
    assert (p.device, p.dtype, p.device_map, p.compute_dtype) == \
        ("cuda:0", "bfloat16", None, "float32")
    old = Accelerators(n_cuda=1, bf16=False, free=(16 << 30,))  # e.g. a V100: no bf16
    assert resolve(section(), accelerators=old).dtype == "float16"
    mac = Accelerators(mps=True)
    assert (resolve(section(), accelerators=mac).device,
            resolve(section(), accelerators=mac).dtype) == ("mps", "float32")
    # an explicit dtype is kept wherever the model runs
    assert resolve(section(dtype="float32"), accelerators=ONE_GPU).dtype == "float32"
    assert resolve(section(device="cpu"), accelerators=ONE_GPU).device == "cpu"


def test_half_precision_on_a_cpu_says_when_it_is_slow():
    amx = Accelerators()  # cpu_bf16: AVX512-BF16 or AMX
    plain = Accelerators(cpu_bf16=False)
    assert resolve(section(dtype="bfloat16"), accelerators=amx).notes == ()
    slow = resolve(section(dtype="bfloat16"), accelerators=plain)
    assert slow.dtype == "bfloat16" and len(slow.notes) == 1
    assert "runs slower than float32" in slow.notes[0] and "AMX" in slow.notes[0]
    assert "slower" in resolve(section(dtype="float16", device="cpu"), accelerators=amx).notes[0]
    assert resolve(section(dtype="float32"), accelerators=plain).notes == ()
    assert resolve(section(dtype="bfloat16"), accelerators=Accelerators(
        n_cuda=1, cpu_bf16=False, free=(80 << 30,))).notes == ()  # a GPU does the work


def test_each_launched_process_gets_its_own_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve(section(), accelerators=TWO_GPUS).device == "cuda:1"
    assert resolve(section(), accelerators=NONE).device == "cpu"


def test_cli_device_wins_and_bad_devices_are_errors():
    assert resolve(section(device="cpu"), "cuda:1", accelerators=TWO_GPUS).device == "cuda:1"
    with pytest.raises(ValidationError, match=r"^--device: 'gpu' is not a device"):
        resolve(section(), "gpu", accelerators=TWO_GPUS)
    with pytest.raises(ValidationError, match="model.device: cuda asked for, but torch "
                                              "sees no CUDA device"):
        resolve(section(device="cuda"), accelerators=NONE)
    with pytest.raises(ValidationError, match="cuda:2 asked for, but there are 2 CUDA"):
        resolve(section(), "cuda:2", accelerators=TWO_GPUS)
    with pytest.raises(ValidationError, match="mps asked for"):
        resolve(section(device="mps"), accelerators=ONE_GPU)


def test_weights_that_do_not_fit_are_split_by_accelerate():
    small = Accelerators(n_cuda=2, free=(10 << 30, 10 << 30))
    fits = resolve(section(), accelerators=small, weights_bytes=2 << 30)
    assert fits.device_map is None                          # one device when it fits
    split = resolve(section(), accelerators=small, weights_bytes=14 << 30)
    assert split.device_map == "auto" and split.device == "cuda:0"
    assert set(split.max_memory) == {0, 1, "cpu"}           # every GPU, then the CPU
    assert split.max_memory[0] < 10 << 30                   # headroom for activations
    assert split.load_kwargs()["device_map"] == "auto"
    assert split.load_kwargs()["dtype"] is torch.bfloat16
    one = resolve(section(device="cuda:1"), accelerators=small, weights_bytes=14 << 30)
    assert set(one.max_memory) == {1, "cpu"}                # asked for one GPU: only it
    capped = resolve(section(max_memory={"cuda:0": 3 << 30, "cpu": 9 << 30}),
                     accelerators=small)
    assert capped.device_map == "auto" and capped.max_memory == {0: 3 << 30, "cpu": 9 << 30}
    here = resolve(section(max_memory={"cuda:0": 3 << 30, "cpu": 9 << 30}), accelerators=NONE)
    assert here.device == "cpu" and here.max_memory == {"cpu": 9 << 30}


def test_split_map_on_a_real_checkpoint(tiny_dirs):
    """accelerate's map of the tiny llama under caps that force a split (GPU 0 / CPU) and
    an offload (CPU / disk); decoder layers are never cut in two."""
    d = tiny_dirs["llama"]
    total = weights_bytes(d, "float32")
    assert total > 0 and weights_bytes(d, "bfloat16") * 2 == total
    cap = int(total * 0.8)  # less than the whole model, more than embeddings + a layer
    gpu_cpu = split_map(d, "float32", {0: cap, "cpu": total * 4})
    assert set(gpu_cpu.values()) == {0, "cpu"}
    assert gpu_cpu["model.embed_tokens"] == 0 and gpu_cpu["lm_head"] == "cpu"
    layers = {k: v for k, v in gpu_cpu.items() if k.startswith("model.layers.")}
    assert set(layers.values()) == {0, "cpu"}                  # the layers are split...
    assert all(k.count(".") == 2 for k in layers), layers      # ...but none cut in two
    cpu_disk = split_map(d, "float32", {"cpu": cap, "disk": total * 4})
    assert set(cpu_disk.values()) == {"cpu", "disk"}
    assert split_map(d, "float32", {0: total * 4}) == {"": 0}  # it fits: one device


def test_load_model_uses_the_placement(tiny_dirs):
    from headsurgeon.model.sources import load_model

    model, _, _ = load_model(str(tiny_dirs["llama"]), placement=Placement("cpu", "bfloat16"))
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    cpu_section = section(device="cpu", dtype="float32")
    model, _, _ = load_model(str(tiny_dirs["llama"]), placement=cpu_section)
    assert model.dtype == torch.float32


def test_recipe_errors_name_the_line_and_cli_device_override(tmp_path, tiny_dirs):
    data = write_questions(tmp_path / "train.jsonl", 12)
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tiny_dirs["llama"], data).replace(
        f"model: {{source: {tiny_dirs['llama']}}}",
        f"model: {{source: {tiny_dirs['llama']}, device: cuda}}"))
    recipe = load(path)
    with pytest.raises(ValidationError, match=r"r\.yaml:2: model\.device: cuda asked for"):
        recipe_placement(recipe, accelerators=NONE)
    fixed = with_device(recipe, "cpu")
    assert fixed.model.device == "cpu" and fixed.sha256 == recipe.sha256
    assert recipe_placement(fixed, tiny_dirs["llama"], accelerators=NONE).device == "cpu"
    with pytest.raises(ValidationError, match="--device"):
        with_device(recipe, "tpu")
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("device: cuda", "device: gpu"))
    with pytest.raises(ValidationError, match=r"bad\.yaml:2: model\.device"):
        load(bad)
    sized = tmp_path / "sized.yaml"
    sized.write_text(path.read_text().replace("device: cuda", "max_memory: {cuda:0: 2GB, "
                                                              "cpu: 500MB}"))
    assert load(sized).model.max_memory == {"cuda:0": 2 * 10**9, "cpu": 500 * 10**6}
    sized.write_text(path.read_text().replace("device: cuda", "max_memory: {cpu: lots}"))
    with pytest.raises(ValidationError, match=r"sized\.yaml:2: model\.max_memory"):
        load(sized)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_cli_device_cuda_without_a_gpu_exits_2_before_training(tmp_path, tiny_dirs, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(recipe_mod, "PLUGIN_FIELDS", available_plugin_fields())
    data = write_questions(tmp_path / "train.jsonl", 12)
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tiny_dirs["llama"], data, out_dir=tmp_path / "run"))
    with pytest.raises(SystemExit) as exc:
        main(["train", str(path), "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert "--device: cuda asked for, but torch sees no CUDA device" in err
    assert not (tmp_path / "run").exists()


def test_torch_engine_returns_float32_cpu_scores_for_a_bf16_model(tiny_dirs):
    from headsurgeon.locate.backend import MetricBatch, make_engine
    from headsurgeon.model.heads import HeadMap
    from headsurgeon.model.sources import load_model

    model, _, _ = load_model(str(tiny_dirs["llama"]), placement=Placement("cpu", "bfloat16"))
    hm = HeadMap.from_model(model)
    eng = make_engine("torch", model, hm)
    seqs, cfs = [[5, 6, 7, 8, 9, 10]], [[5, 6, 7, 8, 11, 12]]
    metric = MetricBatch(torch.tensor([[20, 21]]), torch.tensor([[1.0, -1.0]]))
    vals, scores = eng.attribution(seqs, cfs, metric, 2)
    assert scores.shape == (1, hm.n_layers, hm.n_heads)
    assert scores.dtype == vals.dtype == torch.float32 and scores.device.type == "cpu"
    ref = eng.reference(seqs, metric, 2)
    assert ref.metric.dtype == torch.float32 and ref.head_out.device.type == "cpu"
    eng.close()


def test_gpu_bench_runs_small_on_the_cpu(capsys, monkeypatch):
    """``python bench/gpu.py --small --device cpu`` (run in this process, which has torch
    loaded already): the BENCH line has every key, with sane values (finite, positive;
    nothing about speed, which depends on the machine)."""
    import math
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--small", "--device", "cpu"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    last = out.out.strip().splitlines()[-1]
    assert last.startswith("BENCH gpu ")
    values = dict(kv.split("=") for kv in last.split()[2:])
    assert list(values) == ["spt_over_sft_step", "locate_s_per_1k_heads", "eval_items_per_s",
                            "peak_mem_gb"]
    for key, v in values.items():
        assert math.isfinite(float(v)) and float(v) > 0, (key, v)
    assert "device=cpu" in out.err


def test_batches_halve_on_out_of_memory_and_nothing_else():
    from headsurgeon.model.placement import fit_batches

    seen = []

    def run(chunk):
        if len(chunk) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seen.append(list(chunk))

    assert fit_batches(list(range(10)), 16, run) == 2      # 16 -> 8 -> 4 -> 2
    assert [i for c in seen for i in c] == list(range(10)) and max(map(len, seen)) == 2

    def cpu_oom(chunk):
        if len(chunk) > 1:
            raise RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")
    assert fit_batches([1, 2, 3], 4, cpu_oom) == 1

    def broken(chunk):
        raise RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        fit_batches([1, 2, 3], 4, broken)

    def always_oom(chunk):
        raise torch.OutOfMemoryError("out of memory")
    with pytest.raises(torch.OutOfMemoryError):
        fit_batches([1], 4, always_oom)


def test_eval_log_probs_survive_a_batch_that_does_not_fit(tiny_dirs):
    """A model that runs out of memory above 2 rows per forward scores the same as one
    asked for 2 rows per forward in the first place."""
    from headsurgeon.model.generation import next_token_logprobs
    from headsurgeon.model.sources import load_model

    model, tok, _ = load_model(str(tiny_dirs["llama"]))
    forward = model.forward

    def small_memory(*a, **kw):
        ids = kw.get("input_ids", a[0] if a else None)
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return forward(*a, **kw)

    prompts = ["one", "two two", "three three three", "four", "five five", "six"]
    ref = next_token_logprobs(model, tok, prompts, [65, 66, 67], batch_size=2, progress=False)
    model.forward = small_memory
    got = next_token_logprobs(model, tok, prompts, [65, 66, 67], batch_size=8, progress=False)
    assert torch.equal(got, ref)


def test_load_kwargs_per_placement():
    assert Placement("cpu", "float32").load_kwargs() == {"dtype": torch.float32}
    assert Placement("cuda:1", "bfloat16").load_kwargs() == {
        "dtype": torch.bfloat16, "device_map": {"": "cuda:1"}}
    split = Placement("cuda:0", "bfloat16", "auto", {0: 10, "cpu": 20})
    assert split.load_kwargs() == {"dtype": torch.bfloat16, "device_map": "auto",
                                   "max_memory": {0: 10, "cpu": 20}}


def test_a_model_split_by_max_memory_computes_the_same_logits(tiny_dirs):
    """model.max_memory too small for the weights: accelerate offloads part of the model
    (here to disk, as it would to the CPU behind a GPU) and the logits do not change."""
    from headsurgeon.model.sources import load_model

    d = tiny_dirs["llama"]
    ref, _, _ = load_model(str(d))
    cap = int(weights_bytes(d, "float32") * 0.6)
    placement = resolve(section(dtype="float32", max_memory={"cpu": cap}), accelerators=NONE)
    assert placement.device_map == "auto"
    split, _, _ = load_model(str(d), placement=placement)
    assert "disk" in set(split.hf_device_map.values())
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(split(input_ids=ids).logits, ref(input_ids=ids).logits)
