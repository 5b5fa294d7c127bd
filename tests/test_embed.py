"""Chunking, chunk-combined pooling through embed_texts, bf16 fallback, streamed shards and resume."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stack import embed
from stack.config import ModelConfig, load_params
from stack.embed import chunk_essay, choose_dtype, chunks_from_ids, embed_texts
from stack.errors import StackError


def test_chunk_essay_overlaps_cover_every_token_once():
    ids = list(range(10))
    chunks = chunk_essay(ids, window=4, stride=1, truncate=False)
    assert chunks == [([0, 1, 2, 3], 0), ([3, 4, 5, 6], 1), ([6, 7, 8, 9], 1)]
    pooled = [t for piece, overlap in chunks for t in piece[overlap:]]
    assert pooled == ids
    assert chunk_essay(ids, 4, 1, truncate=True) == [([0, 1, 2, 3], 0)]
    assert chunk_essay(ids[:3], 4, 1, truncate=False) == [([0, 1, 2], 0)]
    with pytest.raises(StackError, match="stride must be in"):
        chunk_essay(ids, 4, 4, truncate=False)


class TokenTable(torch.nn.Module):
    """A context-free 'encoder': hidden state of a token = a fixed vector of its id (and 2x that in layer 1)."""

    def __init__(self, vocab=64, dim=3):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, dim)

    def forward(self, input_ids, attention_mask, output_hidden_states=True):
        h = self.emb(input_ids)
        return SimpleNamespace(hidden_states=(h, 2 * h))


TOK = SimpleNamespace(cls_token_id=1, sep_token_id=2, bos_token_id=None, eos_token_id=None, pad_token_id=0)


def _cfg(**kw):
    return ModelConfig(**{"name": "t", "dtype": "fp32", "batch_size": 3, "stride": 2, **kw})


def _embed(encoded, cfg, model):
    chunks = chunks_from_ids(encoded, TOK, cfg.max_len, cfg.stride, cfg.truncate)
    return embed._embed_chunks(model, chunks, cfg)


def test_pooling_chunks_through_the_model_equals_pooling_the_whole_essay():
    model, essays = TokenTable(), [list(range(3, 40)), list(range(10, 17)), [5, 5, 60]]
    long = _cfg(max_len=64, pooling=("max", "min", "mean"))
    short = _cfg(max_len=8, pooling=("max", "min", "mean"))
    whole, chunked = _embed(essays, long, model), _embed(essays, short, model)
    np.testing.assert_allclose(chunked[:, :6], whole[:, :6], rtol=0, atol=0)  # max and min: exact
    # mean: every essay token once, plus CLS and SEP once per chunk (37 tokens in 6-token windows, stride 2: 9 chunks)
    table = 2 * model.emb.weight.detach().numpy()  # the last layer (the default) is 2x the table
    n_chunks = len(chunk_essay(essays[0], 6, 2, False))
    expected = (table[essays[0]].sum(0) + n_chunks * (table[1] + table[2])) / (len(essays[0]) + 2 * n_chunks)
    np.testing.assert_allclose(chunked[0, 6:], expected, rtol=1e-5)


def test_layers_and_poolings_are_side_by_side_in_config_order():
    model, essays = TokenTable(), [list(range(3, 20))]
    both = _embed(essays, _cfg(layers=(0, 1), pooling=("mean", "max")), model)
    first = _embed(essays, _cfg(layers=(0,), pooling=("mean", "max")), model)
    assert both.shape == (1, 12)
    np.testing.assert_allclose(both[:, 6:], 2 * first, rtol=1e-6)
    mean = _embed(essays, _cfg(layers=(), layer_mode="mean", pooling=("mean",)), model)
    np.testing.assert_allclose(mean, 1.5 * first[:, :3], rtol=1e-6)


def test_choose_dtype_falls_back_to_fp32_when_bf16_drifts(monkeypatch):
    model = TokenTable()
    sample = chunks_from_ids([list(range(3, 20))], TOK, 8, 2, False)
    monkeypatch.setattr(embed, "bf16_supported", lambda: True)
    _, dtype = choose_dtype(model, sample, _cfg(dtype="auto"), threshold=1.01)  # no cosine exceeds 1.01
    assert dtype == "fp32"
    fast, dtype = choose_dtype(model, sample, _cfg(dtype="auto"), threshold=0.9)
    assert dtype == "bf16" and fast.emb.weight.dtype == torch.bfloat16
    assert choose_dtype(model, sample, _cfg(dtype="fp32"))[1] == "fp32"
    with pytest.raises(StackError, match="not one of auto, bf16, fp16, fp32"):
        choose_dtype(model, sample, _cfg(dtype="half"))
    with pytest.raises(StackError, match="fp16 needs a CUDA device"):
        choose_dtype(model, sample, _cfg(dtype="fp16"))


def test_embed_device_is_cuda_only_when_there_is_one(monkeypatch):
    assert embed.embed_device(_cfg(device="cpu")).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert embed.embed_device(_cfg(device="auto")).type == "cpu"
    with pytest.raises(StackError, match="device 'cuda:1', but no CUDA devices are visible; set `device: auto`"):
        embed.embed_device(_cfg(device="cuda:1"))
    with pytest.raises(StackError, match="device 'cuda:x' is not one of"):
        embed.embed_device(_cfg(device="cuda:x"))
    with pytest.raises(StackError, match="configs/models/t.yaml: device 'tpu' is not one of auto, cpu, cuda"):
        embed.embed_device(_cfg(device="tpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert embed.embed_device(_cfg(device="auto")) == torch.device("cuda")
    assert embed.embed_device(_cfg(device="cuda:1")) == torch.device("cuda", 1)
    with pytest.raises(StackError, match="device 'cuda:2', but 2 CUDA devices are visible"):
        embed.embed_device(_cfg(device="cuda:2"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embed_texts_on_cuda_matches_the_cpu(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir)
    texts = ["a short one.", "a much longer essay " * 30, "middle sized text here " * 5]
    cpu, _ = embed_texts(texts, tok, model, _cfg(max_len=32, stride=8, device="cpu"))
    gpu, dtype = embed_texts(texts, tok, model, _cfg(max_len=32, stride=8, device="cuda", dtype="auto"))
    assert dtype in ("bf16", "fp16", "fp32") and next(model.parameters()).device.type == "cpu"  # model untouched
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(cpu), torch.from_numpy(gpu), dim=1)
    assert cos.min().item() > 0.999


def test_embed_texts_shards_follow_length_order_and_give_the_same_result(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir)
    texts = ["a short one.", "a much longer essay " * 30, "middle sized text here " * 5, "x"]
    cfg = _cfg(max_len=32, stride=8, batch_size=2)
    one, _ = embed_texts(texts, tok, model, cfg)
    saved = {}

    class Store:
        def load(self, k, ids):
            return None

        def save(self, k, ids, emb):
            saved[k] = ids

    two, _ = embed_texts(texts, tok, model, _cfg(max_len=32, stride=8, batch_size=2, shard_size=2), open_store=lambda d: Store())
    assert saved == {0: ["1", "2"], 1: ["0", "3"]}  # longest essays first
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)


def test_interrupted_embed_resumes_from_the_last_finished_shard_byte_identical(project, monkeypatch):
    from stack import cache, paths
    from stack.shards import ShardStore, shard_dir
    from stack.stages import run_folds

    params = load_params()
    run_folds(params)
    over = ["shard_size=10", "layers=[-1]", "max_len=128", "batch_size=16"]
    embed.run_embed("minilm", params, over)
    clean = {s: paths.cache_file("minilm", s).read_bytes() for s in ("train", "test")}
    assert not shard_dir("minilm").exists()  # removed once the cache is written
    for s in ("train", "test"):
        paths.cache_file("minilm", s).unlink()

    real_save, calls = ShardStore.save, []

    def save_then_stop(self, k, ids, emb):
        real_save(self, k, ids, emb)
        if k == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardStore, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        embed.run_embed("minilm", params, over)
    assert sorted(p.name for p in shard_dir("minilm").iterdir()) == ["shard_00000.parquet", "shard_00001.parquet"]
    monkeypatch.setattr(ShardStore, "save", real_save)
    real_chunks = embed._embed_chunks
    monkeypatch.setattr(embed, "_embed_chunks", lambda *a, **k: calls.append(1) or real_chunks(*a, **k))
    result = embed.run_embed("minilm", params, over)
    assert len(calls) == 3  # 43 essays in shards of 10: shards 0 and 1 reused, 2..4 computed
    assert {s: paths.cache_file("minilm", s).read_bytes() for s in ("train", "test")} == clean
    train, meta = cache.read_model("minilm", "train")
    assert meta["head"]["alphas_grid"] and set(meta["head"]["chosen"]) == set(result["per_target"])
