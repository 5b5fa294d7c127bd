"""Poolings and layer mixing against hand-computed tensors: padding masks, all-negative rows, chunk combination."""

import pytest
import torch

from stack.backbones.pooling import LAYER_MODES, POOLINGS, get_pooling, mix_layers
from stack.errors import StackError

# two rows, three tokens, two features; row 1 has its last token padded and is entirely negative
H = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [5.0, 0.0]],
                  [[-1.0, -2.0], [-3.0, -6.0], [100.0, 100.0]]])
M = torch.tensor([[1, 1, 1], [1, 1, 0]])
EXPECTED = {
    "mean": [[3.0, -2.0 / 3.0], [-2.0, -4.0]],
    "max": [[5.0, 2.0], [-1.0, -2.0]],  # masking by multiplying would give 0 for the negative row
    "min": [[1.0, -4.0], [-3.0, -6.0]],
    "cls": [[1.0, 2.0], [-1.0, -2.0]],
    "gem": [[((1 + 27 + 125) / 3) ** (1 / 3), ((8 + 1e-18 + 1e-18) / 3) ** (1 / 3)], [1e-6, 1e-6]],
}


def test_every_registered_pooling_has_a_hand_computed_case():
    assert set(POOLINGS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pooling_matches_hand_computed(name):
    got = get_pooling(name)(H, M)
    torch.testing.assert_close(got, torch.tensor(EXPECTED[name]), rtol=1e-5, atol=1e-7)


def test_unknown_pooling_lists_valid_names():
    with pytest.raises(ValueError, match="valid: cls, gem, max, mean, min"):
        get_pooling("meen")


def _pool_in_chunks(pool, hidden, mask, cuts):
    """Pool one essay ``(t, d)`` split at ``cuts``, combining per-chunk statistics the way embed.py does."""
    stats, weights = [], []
    for a, b in zip([0, *cuts], [*cuts, hidden.shape[0]]):
        s, w = pool.stat(hidden[None, a:b], mask[None, a:b])
        stats.append(s)
        weights.append(w)
    s, w = torch.cat(stats), torch.cat(weights)
    if pool.combine == "sum":
        s, w = s.sum(0, keepdim=True), w.sum(0, keepdim=True)
    else:
        s = (s.max(0, keepdim=True) if pool.combine == "max" else s.min(0, keepdim=True)).values
        w = w.sum(0, keepdim=True)
    return pool.finalize(s, w)


@pytest.mark.parametrize("name", ["mean", "max", "min", "gem"])
def test_pooling_the_chunks_of_an_essay_equals_pooling_its_tokens(name):
    torch.manual_seed(0)
    hidden = torch.randn(11, 4) - 0.5
    mask = torch.ones(11, dtype=torch.long)
    pool = get_pooling(name)
    whole = pool(hidden[None], mask[None])
    # overlapping chunks [0, 6) and [4, 11): the 2 shared tokens are masked out in the second chunk
    chunked_h = torch.cat([hidden[:6], hidden[4:]])
    chunked_m = torch.cat([mask[:6], torch.tensor([0, 0]), mask[6:]])
    torch.testing.assert_close(_pool_in_chunks(pool, chunked_h, chunked_m, [6]), whole)


def test_cls_of_a_chunked_essay_is_the_mean_of_its_chunks_cls():
    hidden = torch.tensor([[[2.0], [9.0]], [[4.0], [9.0]]])
    s, w = get_pooling("cls").stat(hidden, torch.ones(2, 2))
    torch.testing.assert_close(get_pooling("cls").finalize(s.sum(0, keepdim=True), w.sum(0, keepdim=True)), torch.tensor([[3.0]]))


STATES = [torch.full((1, 2, 3), float(v)) for v in (0, 1, 2, 4)]  # embeddings + 3 layers


def test_mix_layers_concat_mean_weighted_and_all():
    assert [s[0, 0, 0].item() for s in mix_layers(STATES, [-1, 1], "concat")] == [4.0, 1.0]
    assert mix_layers(STATES, [-2, -1], "mean")[0][0, 0, 0].item() == 3.0
    assert mix_layers(STATES, [1, 3], "weighted", [3.0, 1.0])[0][0, 0, 0].item() == pytest.approx(1.75)
    assert len(mix_layers(STATES, [], "concat")) == 4
    assert mix_layers(STATES, [], "mean")[0][0, 0, 0].item() == pytest.approx(7 / 4)
    assert set(LAYER_MODES) == {"concat", "mean", "weighted"}


@pytest.mark.parametrize("layers, mode, weights, match", [
    ([5], "concat", None, "out of range: this backbone has 4 hidden states"),
    ([1, 2], "weighted", [1.0], "must be 2 non-negative numbers"),
    ([1, 2], "weighted", [1.0, -1.0], "non-negative"),
    ([1], "sum", None, "valid: concat, mean, weighted"),
])
def test_mix_layers_rejects_bad_settings(layers, mode, weights, match):
    with pytest.raises(StackError, match=match):
        mix_layers(STATES, layers, mode, weights)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bf16_states_pool_in_float32(name):
    """A bf16 model's states pool to float32 statistics equal to pooling their float32 copy, with exact token
    counts (bf16 integers are exact only up to 256)."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 301, 4).bfloat16()
    mask = torch.ones(2, 301, dtype=torch.long)
    mask[1, 291:] = 0
    pool = get_pooling(name)
    stat, weight = pool.stat(hidden, mask)
    ref_stat, ref_weight = pool.stat(hidden.float(), mask)
    assert stat.dtype == weight.dtype == torch.float32
    torch.testing.assert_close(stat, ref_stat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight, ref_weight, rtol=0, atol=0)
    if name in ("mean", "max", "min", "gem"):
        assert weight.tolist() == [301.0, 291.0]
