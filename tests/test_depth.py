"""An encoder runs only up to the deepest hidden state its member reads (stack.backbones.depth): the states it
keeps are bit for bit the full model's, the blocks past it never run, and a member reading every state runs all."""

import copy

import numpy as np
import torch

from stack.backbones.depth import encoder_layers, truncate
from stack.backbones.embedder import embed_texts
from stack.members.frozen import FrozenConfig


def _model(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir).eval()


def test_truncated_copy_keeps_the_hidden_states_it_runs_bit_for_bit(tiny_bert_dir):
    _, model = _model(tiny_bert_dir)
    ids, mask = torch.randint(5, 1000, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    with torch.inference_mode():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        cut = copy.deepcopy(model)
        assert truncate(cut, 1) == 1 and len(encoder_layers(cut)) == 1
        got = cut(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, ref))
    assert len(encoder_layers(model)) == 2  # the original is untouched
    assert truncate(copy.deepcopy(model), 5) == 2 and truncate(copy.deepcopy(model), 0) == 1  # at least one block


def _calls(model) -> list[int]:
    """How often each block of ``model`` (and of any deep copy of it) runs."""
    counts = [0] * len(encoder_layers(model))
    for i, block in enumerate(encoder_layers(model)):
        block.register_forward_hook(lambda *a, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def test_a_member_reading_shallow_states_never_runs_the_deeper_blocks(tiny_bert_dir):
    tok, model = _model(tiny_bert_dir)
    texts = ["Dogs is good pet because they loyal.", "I like school. It is fun. My teacher are nice."]
    cfg = FrozenConfig(name="t", max_len=32, stride=8, layers=(1,), precision="fp32", device="cpu", batch_size=4,
                      engine="torch")  # the hooks count PyTorch's blocks (tests/test_ort.py: ONNX Runtime's)
    calls = _calls(model)  # hooks travel with the copy embed_texts makes
    shallow, _ = embed_texts(texts, tok, model, cfg)
    assert calls[0] > 0 and calls[1] == 0
    full, _ = embed_texts(texts, tok, model, FrozenConfig(**{**cfg.__dict__, "layers": ()}))
    assert calls[1] > 0
    np.testing.assert_array_equal(shallow, full[:, 32:64])  # state 1 of all three, the same numbers
    negative, _ = embed_texts(texts, tok, model, FrozenConfig(**{**cfg.__dict__, "layers": (-2,)}))
    np.testing.assert_array_equal(negative, shallow)  # -2 of 3 states is state 1: counted before cutting


def test_a_long_embedding_says_first_how_long_it_will_take(tiny_bert_dir, monkeypatch):
    from stack.backbones import estimate as how_long
    from stack.backbones.estimate import encoder_flops, estimate

    tok, model = _model(tiny_bert_dir)
    monkeypatch.setattr(how_long, "gemm_rate", lambda prec, device_type="cpu": 1e9)  # a machine of 1 GFLOP/s
    cfg = FrozenConfig(name="t", max_len=64, layers=(1,), precision="fp32", device="cpu")
    said = []
    seconds = estimate("fit@t", 1000, [64] * 1500, model, cfg, "t.yaml", say=said.append, longer_than=0)
    flops = encoder_flops(model.config, 1, [64] * 1500)
    assert flops == 1 * (2 * (4 * 32**2 + 2 * 32 * 64) * 64 * 1500 + 4 * 32 * 64**2 * 1500)  # by hand
    assert seconds == flops / (1e9 * how_long.EFFICIENCY)
    assert len(said) == 1 and said[0].startswith("fit@t: 1,000 essays (1,500 chunks, 1 of 2 blocks), about ")
    assert "on this CPU (fp32" in said[0] and said[0].endswith("debug: true checks a configuration in a minute")
    deeper = estimate("x", 1000, [64] * 1500, model, FrozenConfig(**{**cfg.__dict__, "layers": ()}), "t.yaml",
                      say=said.append, longer_than=1e12)
    assert deeper == 2 * seconds and len(said) == 1  # twice the blocks, twice the time; short: nothing said
    assert [how_long.duration(s) for s in (40, 420, 12600)] == ["40 s", "7 min", "3.5 h"]
