import json
import struct

import gguf
import numpy as np
import pytest
import torch
from helpers import ANALYSIS_LLAMA, tiny_llama, write_gguf
from safetensors.torch import save_file

from alphasel.errors import SourceError
from alphasel.sources import open_source
from alphasel.sources.gguf_file import hf_name

Q = gguf.GGMLQuantizationType


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(50, 16, generator=generator),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=generator),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(16, generator=generator),
        "model.layers.1.mlp.up_proj.weight": torch.randn(32, 16, generator=generator),
        "model.layers.10.mlp.up_proj.weight": torch.randn(32, 16, generator=generator),
        "model.norm.weight": torch.ones(16),
    }


def test_single_safetensors_lists_matrices_and_upcasts_half_precision(tmp_path):
    state = _state()
    state["model.layers.0.self_attn.q_proj.weight"] = state[
        "model.layers.0.self_attn.q_proj.weight"].to(torch.bfloat16)
    state["model.layers.1.mlp.up_proj.weight"] = state[
        "model.layers.1.mlp.up_proj.weight"].to(torch.float16)
    save_file(state, tmp_path / "model.safetensors")
    with open_source(tmp_path / "model.safetensors") as source:
        refs = source.matrices()
        # 2-D weights only, in reading order: embeddings, blocks by depth (1 before 10)
        assert [r.name for r in refs] == [
            "model.embed_tokens", "model.layers.0.self_attn.q_proj",
            "model.layers.1.mlp.up_proj", "model.layers.10.mlp.up_proj"]
        for ref in refs:
            matrix = source.load(ref)
            assert matrix.dtype in (np.float32, np.float64)
            expected = state[ref.key].float().numpy()
            np.testing.assert_array_equal(matrix, expected)


def test_sharded_directory_follows_the_index(tmp_path):
    state = _state()
    names = sorted(state)
    first, second = dict(list(state.items())[:3]), dict(list(state.items())[3:])
    save_file(first, tmp_path / "model-00001-of-00002.safetensors")
    save_file(second, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {name: ("model-00001-of-00002.safetensors" if name in first
                         else "model-00002-of-00002.safetensors") for name in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    source = open_source(tmp_path)
    assert len(source.matrices()) == 4
    ref = next(r for r in source.matrices() if r.name == "model.layers.10.mlp.up_proj")
    np.testing.assert_array_equal(source.load(ref), state[ref.key].numpy())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SourceError, match="missing"):
        open_source(tmp_path)


def test_truncated_safetensors_is_refused_before_reading(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(SourceError, match="truncated"):
        open_source(path)
    path.write_bytes(struct.pack("<Q", 20) + b"{not json at all....")
    with pytest.raises(SourceError, match="not a valid safetensors"):
        open_source(path)
    path.write_bytes(b"\x01")
    with pytest.raises(SourceError, match="not a valid safetensors"):
        open_source(path)


def test_pytorch_bin_fallback(tmp_path):
    state = _state()
    torch.save(state, tmp_path / "pytorch_model.bin")
    source = open_source(tmp_path)
    assert source.format == "pytorch-bin"
    ref = source.matrices()[1]
    np.testing.assert_array_equal(source.load(ref), state[ref.key].numpy())
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(SourceError, match="cannot read"):
        open_source(tmp_path)


def test_pytorch_bin_shards_read_from_two_threads(tmp_path):
    """Workers straddling a shard boundary each get their own tensor (the open shard is
    switched under a lock), stored precision included."""
    from concurrent.futures import ThreadPoolExecutor

    generator = torch.Generator().manual_seed(0)
    shards = [{f"model.layers.{block}.mlp.up_proj.weight":
               torch.randn(24, 16, generator=generator).bfloat16()} for block in range(2)]
    for index, shard in enumerate(shards):
        torch.save(shard, tmp_path / f"pytorch_model-0000{index + 1}-of-00002.bin")
    expected = {name: tensor for shard in shards for name, tensor in shard.items()}
    with open_source(tmp_path) as source:
        refs = source.matrices() * 100  # alternating shards: a switch before nearly every read

        def read(ref):
            stored = source.load_stored(ref)
            assert stored.dtype == torch.bfloat16
            return ref.key, source.load(ref), stored

        with ThreadPoolExecutor(2) as pool:
            for key, loaded, stored in pool.map(read, refs):
                assert torch.equal(stored, expected[key])
                np.testing.assert_array_equal(loaded, expected[key].float().numpy())


def test_directory_without_weights_and_missing_paths(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SourceError, match="no weights"):
        open_source(tmp_path)
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nowhere") + "/")
    with pytest.raises(SourceError, match="does not exist"):
        open_source("missing.safetensors")


def test_in_memory_module_lists_linear_and_embedding_weights():
    model = tiny_llama(layers=2, **ANALYSIS_LLAMA)
    source = open_source(model)
    names = {ref.name for ref in source.matrices()}
    linear = {name for name, m in model.named_modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    assert names == linear
    ref = next(r for r in source.matrices() if r.name == "model.layers.1.mlp.down_proj")
    np.testing.assert_array_equal(source.load(ref),
                                  model.model.layers[1].mlp.down_proj.weight.detach().numpy())


def test_gguf_names_shapes_and_dequantized_values(tmp_path):
    rng = np.random.default_rng(0)
    embed = rng.standard_normal((100, 64)).astype(np.float32)
    query = rng.standard_normal((64, 64)).astype(np.float32)
    key = rng.standard_normal((32, 64)).astype(np.float32)
    path = write_gguf(tmp_path / "tiny.gguf", {
        "token_embd.weight": (embed, Q.F32),
        "blk.0.attn_q.weight": (query, Q.Q8_0),
        "blk.0.attn_k.weight": (key, Q.Q4_1),
        "blk.0.attn_norm.weight": (np.ones(64, np.float32), Q.F32),
    })
    source = open_source(path)
    refs = {ref.name: ref for ref in source.matrices()}
    assert set(refs) == {"model.embed_tokens", "model.layers.0.self_attn.q_proj",
                         "model.layers.0.self_attn.k_proj"}
    assert refs["model.layers.0.self_attn.k_proj"].shape == (32, 64)
    np.testing.assert_array_equal(source.load(refs["model.embed_tokens"]), embed)
    expected = gguf.quants.dequantize(gguf.quants.quantize(query, Q.Q8_0), Q.Q8_0)
    np.testing.assert_array_equal(source.load(refs["model.layers.0.self_attn.q_proj"]), expected)
    np.testing.assert_allclose(source.load(refs["model.layers.0.self_attn.k_proj"]), key,
                               atol=0.5)  # Q4_1 is lossy, but it is this matrix
    source.close()


def test_gguf_corrupt_truncated_and_unsupported(tmp_path):
    rng = np.random.default_rng(0)
    path = write_gguf(tmp_path / "tiny.gguf",
                      {"blk.0.attn_q.weight": (rng.standard_normal((64, 64)).astype(np.float32),
                                               Q.Q8_0)})
    data = path.read_bytes()
    (tmp_path / "short.gguf").write_bytes(data[:-500])
    with pytest.raises(SourceError, match="truncated"):
        open_source(tmp_path / "short.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + data[4:])
    with pytest.raises(SourceError, match="not a GGUF file"):
        open_source(tmp_path / "bad.gguf")
    # Q8_K has a known layout but no dequantizer in the gguf package.
    raw = np.zeros((64, 292), dtype=np.uint8)  # 256 values per 292-byte Q8_K block
    writer = gguf.GGUFWriter(str(tmp_path / "q8k.gguf"), "llama")
    writer.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=Q.Q8_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SourceError, match="Q8_K"):
        open_source(tmp_path / "q8k.gguf")


def test_gguf_names_map_to_hf():
    assert hf_name("blk.12.ffn_gate.weight") == "model.layers.12.mlp.gate_proj"
    assert hf_name("output.weight") == "lm_head"
    assert hf_name("blk.3.attn_unknown.weight") == "blk.3.attn_unknown"


def _cache_model(cache, repo_id: str, files: dict[str, bytes | dict]) -> str:
    """Lay out a hub cache entry as huggingface_hub does (refs/main → snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for name, content in files.items():
        if isinstance(content, dict):
            save_file(content, snapshot / name)
        else:
            (snapshot / name).write_bytes(content)
    return commit


def test_hub_id_resolves_from_the_cache_offline(offline_hub):
    commit = _cache_model(offline_hub, "tiny-org/tiny-llama",
                          {"config.json": b"{}", "model.safetensors": _state()})
    source = open_source("tiny-org/tiny-llama")
    assert source.model_id == "tiny-org/tiny-llama"
    assert source.revision == commit
    assert len(source.matrices()) == 4
    assert open_source("tiny-org/tiny-llama", revision=commit).revision == commit


def test_hub_id_not_cached_while_offline(offline_hub):
    with pytest.raises(SourceError, match="not in the cache.*HF_HUB_OFFLINE"):
        open_source("nobody/no-such-model")
    _cache_model(offline_hub, "tiny-org/tiny-llama",
                 {"config.json": b"{}", "model.safetensors": _state()})
    with pytest.raises(SourceError, match="revision"):
        open_source("tiny-org/tiny-llama", revision="v9")


def test_packaged_aliases_resolve():
    smol = open_source("smollm2")
    assert smol.format == "gguf" and len(smol.matrices()) == 211
    assert smol.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    minilm = open_source("minilm")
    assert minilm.format == "safetensors" and len(minilm.matrices()) == 40


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q5_1, Q.F16, Q.F32])
def test_dequantization_equals_gguf_bit_for_bit(qtype):
    """Q4_0/Q4_1/Q8_0 have their own fast path; the rest go through gguf."""
    from alphasel.sources.gguf_file import dequantize

    matrix = (np.random.default_rng(1).standard_normal((48, 128)) * 3).astype(np.float32)
    packed = gguf.quants.quantize(matrix, qtype)
    expected = np.asarray(gguf.quants.dequantize(packed, qtype), dtype=np.float32)
    ours = dequantize(packed.tobytes(), qtype, matrix.shape)
    assert ours.dtype == np.float32 and ours.shape == matrix.shape
    np.testing.assert_array_equal(ours, expected.reshape(matrix.shape))


def test_gguf_llama_q_and_k_rows_come_back_in_hf_order(tmp_path):
    """llama.cpp permutes a Llama q/k weight's rows per head for its rotary layout; the source
    puts them back, as transformers' loader does, so an adapter trained on the HF model adds
    to the right rows (singular values alone would not notice)."""
    import gguf

    rng = np.random.default_rng(0)
    heads, kv_heads, head_dim, hidden = 4, 2, 8, 32
    q = rng.standard_normal((heads * head_dim, hidden)).astype(np.float32)
    k = rng.standard_normal((kv_heads * head_dim, hidden)).astype(np.float32)

    def llama_cpp_permute(weights, groups):  # as llama.cpp's converter writes them
        return weights.reshape(groups, 2, weights.shape[0] // groups // 2,
                               weights.shape[1]).swapaxes(1, 2).reshape(weights.shape)

    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_tensor("blk.0.attn_q.weight", llama_cpp_permute(q, heads))
    writer.add_tensor("blk.0.attn_k.weight", llama_cpp_permute(k, kv_heads))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    source = open_source(tmp_path / "m.gguf")
    refs = {ref.name: ref for ref in source.matrices()}
    np.testing.assert_array_equal(source.load(refs["model.layers.0.self_attn.q_proj"]), q)
    np.testing.assert_array_equal(source.load(refs["model.layers.0.self_attn.k_proj"]), k)
