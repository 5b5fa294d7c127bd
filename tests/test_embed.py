"""Frozen embedding: chunking, chunk-combined pooling through embed_chunks, the precision choice (bf16 kept only if
it matches fp32), devices, length-sorted shards, and the content-hash store (resume; a new test set embeds only its
new essays)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from stack import runtime
from stack.backbones import embedder
from stack.backbones.chunks import chunk_essay, chunks_from_ids, encode
from stack.backbones.embedder import embed_chunks, embed_texts, prepare
from stack.config import load_params
from stack.errors import StackError
from stack.members.frozen import FrozenConfig
from stack.stages import run_folds

from conftest import DATA, FB3, TARGETS, edit_yaml

CPU = torch.device("cpu")
WHERE = "configs/members/t.yaml"


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
    return FrozenConfig(**{"name": "t", "precision": "fp32", "batch_size": 3, "stride": 2, "device": "cpu", **kw})


def _embed(encoded, cfg, model):
    chunks = chunks_from_ids(encoded, TOK, cfg.max_len, cfg.stride, cfg.truncate)
    return embed_chunks(model, chunks, cfg)


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


def test_prepare_keeps_bf16_only_when_it_matches_fp32(monkeypatch):
    model = TokenTable()
    sample = chunks_from_ids([list(range(3, 20))], TOK, 8, 2, False)
    monkeypatch.setattr(runtime, "native_bf16", lambda dev: True)
    _, precision = prepare(model, sample, _cfg(precision="auto"), CPU, WHERE, threshold=1.01)  # no cosine exceeds 1.01
    assert precision == "fp32"
    fast, precision = prepare(model, sample, _cfg(precision="auto"), CPU, WHERE, threshold=0.9)
    assert precision == "bf16" and fast.emb.weight.dtype == torch.bfloat16
    assert model.emb.weight.dtype == torch.float32  # the model itself is left as it was
    assert prepare(model, sample, _cfg(precision="fp32"), CPU, WHERE)[1] == "fp32"
    # a resumed run keeps the precision its stored embeddings were made in, whatever the check would say
    assert prepare(model, sample, _cfg(precision="auto"), CPU, WHERE, precision="fp32", threshold=0.9)[1] == "fp32"
    monkeypatch.setattr(runtime, "native_bf16", lambda dev: False)  # emulated bf16 is never chosen
    assert prepare(model, sample, _cfg(precision="auto"), CPU, WHERE, threshold=0.9)[1] == "fp32"
    with pytest.raises(StackError, match="t.yaml: precision 'half' is not one of auto, bf16, fp16, fp32"):
        prepare(model, sample, _cfg(precision="half"), CPU, WHERE)
    with pytest.raises(StackError, match="t.yaml: precision fp16 needs a CUDA device"):
        prepare(model, sample, _cfg(precision="fp16"), CPU, WHERE)


def test_device_is_cuda_only_when_there_is_one(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert runtime.device("cpu", WHERE).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.device("auto", WHERE).type == "cpu"
    with pytest.raises(StackError, match="device 'cuda:1', but no CUDA devices are visible; set `device: auto`"):
        runtime.device("cuda:1", WHERE)
    with pytest.raises(StackError, match="device 'cuda:x' is not one of"):
        runtime.device("cuda:x", WHERE)
    with pytest.raises(StackError, match="configs/members/t.yaml: device 'tpu' is not one of auto, cpu, cuda"):
        runtime.device("tpu", WHERE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    assert runtime.device("auto", WHERE) == torch.device("cuda", 0)
    assert runtime.device("cuda:1", WHERE) == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun each rank takes its own device
    assert runtime.device("auto", WHERE) == torch.device("cuda", 1)
    with pytest.raises(StackError, match="device 'cuda:2', but 2 CUDA devices are visible"):
        runtime.device("cuda:2", WHERE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embed_texts_on_cuda_matches_the_cpu(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir)
    texts = ["a short one.", "a much longer essay " * 30, "middle sized text here " * 5]
    cpu, _ = embed_texts(texts, tok, model, _cfg(max_len=32, stride=8, device="cpu"))
    gpu, precision = embed_texts(texts, tok, model, _cfg(max_len=32, stride=8, device="cuda", precision="auto"))
    assert precision in ("bf16", "fp16", "fp32") and next(model.parameters()).device.type == "cpu"  # model untouched
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(cpu), torch.from_numpy(gpu), dim=1)
    assert cos.min().item() > 0.999


def test_embed_texts_shards_follow_length_order_and_give_the_same_result(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir)
    texts = ["a short one.", "a much longer essay " * 30, "middle sized text here " * 5, "x"]
    one, _ = embed_texts(texts, tok, model, _cfg(max_len=32, stride=8, batch_size=2))
    shards = []
    two, _ = embed_texts(texts, tok, model, _cfg(max_len=32, stride=8, batch_size=2, shard_size=2),
                         on_shard=lambda rows, emb, precision: shards.append((list(rows), emb, precision)))
    assert [rows for rows, _, _ in shards] == [[1, 2], [0, 3]]  # longest essays first
    assert {precision for _, _, precision in shards} == {"fp32"}
    for rows, emb, _ in shards:  # each shard hands over the rows it embedded
        np.testing.assert_array_equal(emb, two[rows])
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)


def _frozen_fit(params, overrides=None):
    from stack.members.run import fit_member

    return fit_member("minilm", params, overrides)


def test_interrupted_fit_resumes_from_the_last_stored_shard_byte_identical(project, monkeypatch):
    import shutil

    from stack import cache, paths
    from stack.members.store import EmbeddingStore
    from stack.stages import run_folds

    params = load_params()
    run_folds(params)
    over = ["shard_size=10", "layers=[-1]", "max_len=128", "batch_size=16"]
    first = _frozen_fit(params, over)
    assert (first["embedded"], first["reused"]) == (43, 0)
    clean = {s: paths.cache_file("minilm", s).read_bytes() for s in ("train", "test")}
    for s in ("train", "test"):
        paths.cache_file("minilm", s).unlink()
    shutil.rmtree(paths.embedding_store("minilm"))

    real_add, added = EmbeddingStore.add, []

    def add_then_stop(self, hashes, emb, precision, n_states=None):
        real_add(self, hashes, emb, precision, n_states)
        added.append(len(hashes))
        if len(added) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(EmbeddingStore, "add", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _frozen_fit(params, over)
    (key,) = paths.embedding_store("minilm").iterdir()
    assert sorted(p.name for p in key.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert not paths.cache_file("minilm", "train").exists()  # no cache before every essay is embedded
    monkeypatch.setattr(EmbeddingStore, "add", real_add)
    calls = []
    real_chunks = embedder.embed_chunks
    def count(model, chunks, cfg, *a, **k):  # shards only (with progress): not the few chunks an engine's check embeds
        calls.extend([1] if (a[1] if len(a) > 1 else k.get("progress")) is not None else [])
        return real_chunks(model, chunks, cfg, *a, **k)

    monkeypatch.setattr(embedder, "embed_chunks", count)
    result = _frozen_fit(params, over)
    assert len(calls) == 3  # 43 essays in shards of 10: shards 0 and 1 reused, the other 23 essays in 3 shards
    assert (result["embedded"], result["reused"]) == (23, 20)
    assert {s: paths.cache_file("minilm", s).read_bytes() for s in ("train", "test")} == clean
    _, meta = cache.read_member("minilm", "train", FB3)
    assert meta["head"]["alphas_grid"] and set(meta["head"]["chosen"]) == set(TARGETS)


def _essays_sent_to_the_encoder(monkeypatch) -> list[tuple[int, ...]]:
    """Record the token ids (no specials) of every essay embed_chunks receives, rebuilt from its chunks."""
    seen, real = [], embedder.embed_chunks

    def record(model, chunks, cfg, *args, **kwargs):
        if (args[1] if len(args) > 1 else kwargs.get("progress")) is None:  # an engine's check of a few short chunks
            return real(model, chunks, cfg, *args, **kwargs)
        essays: dict[int, list[int]] = {}
        for c in chunks:  # a chunk's new tokens: pool_mask 1, specials (first and last) excluded
            essays.setdefault(c.essay, []).extend(t for t, m in zip(c.tokens[1:-1], c.pool_mask[1:-1]) if m)
        seen.extend(tuple(ids) for ids in essays.values())
        return real(model, chunks, cfg, *args, **kwargs)

    monkeypatch.setattr(embedder, "embed_chunks", record)
    return seen


def test_a_new_test_set_embeds_only_its_new_essays(project, tiny_bert_dir, monkeypatch):
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from stack import cache, paths
    from stack.backbones.loading import weights_stamp
    from stack.cli import app
    from stack.members.frozen import embedding_key
    from stack.members.registry import load_member
    from stack.members.store import KEEP, EmbeddingStore, text_hash

    runner = CliRunner()
    for args in (["folds"], ["fit", "minilm"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert "embedded 43 new essays, reused 0" in result.output
    old_test, _ = cache.read_member("minilm", "test", FB3)

    new = pd.read_csv(DATA / "train.csv").iloc[100:102][["text_id", "full_text"]]  # essays the project never saw
    test = pd.concat([pd.read_csv("data/fb3/test.csv"), new], ignore_index=True)
    test.to_csv("data/fb3/test2.csv", index=False)
    test[["text_id"]].assign(**{t: 3.0 for t in TARGETS}).to_csv("data/fb3/sample2.csv", index=False)
    edit_yaml(project / "params.yaml", data={"train": "data/fb3/train.csv", "test": "data/fb3/test2.csv",
                                             "sample_submission": "data/fb3/sample2.csv"})
    seen = _essays_sent_to_the_encoder(monkeypatch)
    result = _frozen_fit(load_params())

    assert (result["embedded"], result["reused"]) == (2, 43)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    assert sorted(seen) == sorted(tuple(ids) for ids in encode(new["full_text"].tolist(), tok))
    texts = pd.read_csv("data/fb3/train.csv")["full_text"].tolist() + test["full_text"].tolist()
    spec = load_member("minilm")
    store = EmbeddingStore(paths.embedding_store("minilm"), embedding_key(spec, weights_stamp(spec.backbone)))
    assert len(store) == 45 and store.missing([text_hash(t) for t in texts]) == []
    got, _ = cache.read_member("minilm", "test", FB3)
    assert got["text_id"].tolist() == test["text_id"].tolist()
    emb = cache.emb_columns(got)
    pd.testing.assert_frame_equal(got[emb].iloc[:3], old_test[emb], check_exact=True)  # reused as stored

    # a config change that changes the embeddings starts a new key; switching back costs nothing; only the
    # KEEP most recently used keys stay
    stamp = weights_stamp(spec.backbone)
    default, first, second = (embedding_key(load_member("minilm", over), stamp) for over in ([], ["layers=[0]"],
                                                                                             ["layers=[1]"]))
    changed = _frozen_fit(load_params(), ["layers=[-1]"])
    assert (changed["embedded"], changed["reused"]) == (45, 0)
    assert (_frozen_fit(load_params())["embedded"]) == 0
    for layer in (0, 1):
        _frozen_fit(load_params(), [f"layers=[{layer}]"])
    kept = {p.name for p in paths.embedding_store("minilm").iterdir()}
    assert kept == {default, first, second} and len(kept) == KEEP  # layers=[-1], least recently used, is gone


def test_other_weights_at_the_same_path_are_embedded_again(project, tiny_bert_dir, tmp_path):
    import shutil

    from transformers import BertConfig, BertModel

    from conftest import TINY

    copy = shutil.copytree(tiny_bert_dir, tmp_path / "encoder")
    edit_yaml(project / "configs" / "backbones" / "minilm.yaml", path=str(copy))
    run_folds(load_params())
    assert _frozen_fit(load_params())["embedded"] == 43
    assert _frozen_fit(load_params())["embedded"] == 0
    torch.manual_seed(1)
    BertModel(BertConfig(**TINY)).save_pretrained(copy)  # retrained weights, same architecture, same path
    assert _frozen_fit(load_params())["embedded"] == 43


def test_an_unreadable_part_is_embedded_again(project):
    from stack import paths
    from stack.stages import run_folds

    params = load_params()
    run_folds(params)
    over = ["shard_size=10", "layers=[-1]"]
    _frozen_fit(params, over)
    clean = {s: paths.cache_file("minilm", s).read_bytes() for s in ("train", "test")}
    (key,) = paths.embedding_store("minilm").iterdir()
    part = key / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:200])
    result = _frozen_fit(params, over)
    assert (result["embedded"], result["reused"]) == (10, 33)
    assert {s: paths.cache_file("minilm", s).read_bytes() for s in ("train", "test")} == clean
