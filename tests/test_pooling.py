"""The pooling contract (stack.backbones.pooling) against hand-computed tensors: token poolings with padding
masks and all-negative rows, chunk combination, layer mixing, the fine-tuned members' Pooler (learned layer
weights, several layers and poolings side by side) and PoolingSpec's one-line errors."""

import pytest
import torch

from stack.backbones.pooling import LAYER_MODES, TOKEN_POOLINGS, Pooler, PoolingSpec, mix_layers
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
TRAINABLE = {"attention"}  # hand-computed below, with its learned score made constant


def test_every_registered_pooling_has_a_hand_computed_case():
    assert {n for n, c in TOKEN_POOLINGS.items() if not c.trainable} == set(EXPECTED)
    assert {n for n, c in TOKEN_POOLINGS.items() if c.trainable} == TRAINABLE


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pooling_matches_hand_computed(name):
    got = TOKEN_POOLINGS[name]()(H, M)
    torch.testing.assert_close(got, torch.tensor(EXPECTED[name]), rtol=1e-5, atol=1e-7)


def test_attention_with_a_constant_score_is_the_mean_of_the_real_tokens():
    att = TOKEN_POOLINGS["attention"](hidden_size=2)
    with torch.no_grad():
        att.score[2].weight.zero_()  # every token scores the bias: uniform weights over the unpadded tokens
    torch.testing.assert_close(att(H, M), torch.tensor(EXPECTED["mean"]), rtol=1e-5, atol=1e-6)


def _pool_in_chunks(pool, hidden, mask, cuts):
    """Pool one essay ``(t, d)`` split at ``cuts``, combining per-chunk statistics the way the embedder does."""
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
    pool = TOKEN_POOLINGS[name]()
    whole = pool(hidden[None], mask[None])
    # overlapping chunks [0, 6) and [4, 11): the 2 shared tokens are masked out in the second chunk
    chunked_h = torch.cat([hidden[:6], hidden[4:]])
    chunked_m = torch.cat([mask[:6], torch.tensor([0, 0]), mask[6:]])
    torch.testing.assert_close(_pool_in_chunks(pool, chunked_h, chunked_m, [6]), whole)


def test_cls_of_a_chunked_essay_is_the_mean_of_its_chunks_cls():
    hidden = torch.tensor([[[2.0], [9.0]], [[4.0], [9.0]]])
    cls = TOKEN_POOLINGS["cls"]()
    s, w = cls.stat(hidden, torch.ones(2, 2))
    torch.testing.assert_close(cls.finalize(s.sum(0, keepdim=True), w.sum(0, keepdim=True)), torch.tensor([[3.0]]))


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
    ([1], "sum", None, r"unknown layer_mode 'sum' \(valid: concat, mean, weighted\)"),
])
def test_mix_layers_rejects_bad_settings(layers, mode, weights, match):
    with pytest.raises(ValueError, match=match):
        mix_layers(STATES, layers, mode, weights)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bf16_states_pool_in_float32(name):
    """A bf16 model's states pool to float32 statistics equal to pooling their float32 copy, with exact token
    counts (bf16 integers are exact only up to 256)."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 301, 4).bfloat16()
    mask = torch.ones(2, 301, dtype=torch.long)
    mask[1, 291:] = 0
    pool = TOKEN_POOLINGS[name]()
    stat, weight = pool.stat(hidden, mask)
    ref_stat, ref_weight = pool.stat(hidden.float(), mask)
    assert stat.dtype == weight.dtype == torch.float32
    torch.testing.assert_close(stat, ref_stat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight, ref_weight, rtol=0, atol=0)
    if name in ("mean", "max", "min", "gem"):
        assert weight.tolist() == [301.0, 291.0]


# --- Pooler: the fine-tuned members' pooling ------------------------------------------------------------------

def test_pooler_weighted_learns_softmax_layer_weights():
    ones = torch.ones(1, 2, dtype=torch.long)
    pooler = Pooler(PoolingSpec(("mean",), (1, 3), "weighted", (3.0, 1.0)), hidden_size=3, n_states=4)
    assert pooler.out_dim == 3
    torch.testing.assert_close(torch.softmax(pooler.logits, 0), torch.tensor([0.75, 0.25]))  # from layer_weights
    out = pooler(STATES, ones)
    torch.testing.assert_close(out, torch.full((1, 3), 0.75 * 1 + 0.25 * 4))
    out.sum().backward()
    # d/d logit_i of 3 * sum_j s_j v_j = 3 * s_i * (v_i - 1.75), with s = (0.75, 0.25), v = (1, 4)
    torch.testing.assert_close(pooler.logits.grad, torch.tensor([-1.6875, 1.6875]))
    torch.optim.SGD(pooler.parameters(), lr=1.0).step()
    assert torch.softmax(pooler.logits, 0)[0] > 0.75  # minimising the sum moves weight to the smaller layer

    uniform = Pooler(PoolingSpec(("mean",), (), "weighted"), hidden_size=3, n_states=4)  # all 4 states, equal
    torch.testing.assert_close(torch.softmax(uniform.logits, 0), torch.full((4,), 0.25))
    torch.testing.assert_close(uniform(STATES, ones), torch.full((1, 3), 7 / 4))


def test_pooler_concat_of_layers_and_poolings_side_by_side():
    states = [torch.zeros_like(H), H, 2 * H, -H]
    pooler = Pooler(PoolingSpec(("mean", "max"), (-1, 1), "concat"), hidden_size=2, n_states=4)
    assert pooler.out_dim == 2 * 2 * 2 and not list(pooler.parameters())
    mean, mx, mn = (torch.tensor(EXPECTED[k]) for k in ("mean", "max", "min"))
    expected = torch.cat([-mean, -mn, mean, mx], dim=1)  # layer -1 = -H (max of -H = -min of H), then layer 1 = H
    torch.testing.assert_close(pooler(states, M), expected)
    averaged = Pooler(PoolingSpec(("mean",), (-2, -1), "mean"), hidden_size=2, n_states=4)
    assert averaged.out_dim == 2
    torch.testing.assert_close(averaged(states, M), 0.5 * mean)  # (2H - H) / 2, then mean over real tokens


@pytest.mark.parametrize("spec", [PoolingSpec((p,)) for p in sorted(TOKEN_POOLINGS)] + [
    PoolingSpec(("mean",), (), "weighted"), PoolingSpec(("max", "attention"), (-2, -1), "concat"),
    PoolingSpec(("gem",), (-3, -1), "mean")], ids=str)
def test_pooler_ignores_padding(spec):
    torch.manual_seed(0)
    states = tuple(torch.randn(2, 4, 5) - 3.0 for _ in range(4))  # all-negative-ish rows
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooler = Pooler(spec, hidden_size=5, n_states=4)
    out = pooler(states, mask)
    assert out.shape == (2, pooler.out_dim) and out.dtype == torch.float32
    changed = tuple(h.clone() for h in states)
    for h in changed:
        h[0, 2:] = 1e3  # padding of row 0
    torch.testing.assert_close(pooler(changed, mask), out)


@pytest.mark.parametrize("spec, match", [
    (PoolingSpec(("mean",), (5,)), "out of range: this backbone has 4 hidden states"),
    (PoolingSpec(("mean",), (1, 2), "weighted", (1.0,)), "layer_weights must be 2 positive numbers"),
    (PoolingSpec(("mean",), (1, 2), "weighted", (1.0, 0.0)), "layer_weights must be 2 positive numbers"),
    (PoolingSpec(("avg",)), "unknown pooling 'avg'"),
])
def test_pooler_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        Pooler(spec, hidden_size=3, n_states=4)


# --- PoolingSpec.check: one-line errors a person can act on -----------------------------------------------------

@pytest.mark.parametrize("spec, trainable, match", [
    (PoolingSpec(("meen",)), True, r"unknown pooling 'meen' \(valid: attention, cls, gem, max, mean, min\)$"),
    (PoolingSpec(("weighted_layer",)), True, r"weighted_layer is now `layer_mode: weighted` with `layers: \[\]`"),
    (PoolingSpec(("concat_last4",)), False, r"concat_last4 is now `layers: \[-4, -3, -2, -1\]` with `layer_mode: concat`"),
    (PoolingSpec(("mean", "attention")), False, "pooling 'attention' has weights to learn: use it in a finetune member"),
    (PoolingSpec(()), True, "pooling is empty"),
    (PoolingSpec(("mean",), (-1,), "sum"), True, r"unknown layer_mode 'sum' \(valid: concat, mean, weighted\)"),
    (PoolingSpec(("mean",), (-2, -1), "weighted"), False, "weighted in a frozen member needs layer_weights"),
    (PoolingSpec(("mean",), (-2, -1), "weighted", (1.0,)), False, r"layer_weights \[1.0\] must be 2 non-negative"),
    (PoolingSpec(("mean",), (-2, -1), "weighted", (1.0, -1.0)), False, "non-negative numbers .* positive sum"),
])
def test_pooling_spec_check_errors(spec, trainable, match):
    with pytest.raises(ValueError, match=match):
        spec.check(trainable)


def test_pooling_spec_check_accepts_what_each_kind_can_run():
    PoolingSpec(("attention", "mean"), (), "weighted").check(trainable=True)  # learned: no weights needed
    PoolingSpec(("mean", "max"), (-2, -1), "weighted", (1.0, 2.0)).check(trainable=False)


@pytest.mark.parametrize("member, override, match", [
    ("minilm", "pooling=[attention]", "configs/members/minilm.yaml: pooling 'attention' has weights to learn"),
    ("minilm-ft", "pooling=[weighted_layer]", "configs/members/minilm-ft.yaml: unknown pooling 'weighted_layer'.*"
                                              "`layer_mode: weighted`"),
    ("minilm-ft", "layer_mode=sum", "configs/members/minilm-ft.yaml: unknown layer_mode 'sum'"),
])
def test_member_configs_report_pooling_mistakes_with_their_file(project, member, override, match):
    from stack.members.registry import load_member

    with pytest.raises(StackError, match=match):
        load_member(member, [override])


def test_frozen_layers_out_of_range_are_an_error_naming_the_file(project):
    from typer.testing import CliRunner

    from stack.cli import app

    assert CliRunner().invoke(app, ["folds"]).exit_code == 0
    result = CliRunner().invoke(app, ["fit", "minilm", "--set", "layers=[20]"])
    assert result.exit_code == 2, repr(result.exception)
    assert "configs/members/minilm.yaml: layers [20] out of range: this backbone has 3 hidden states" in result.output


def test_frozen_layer_weights_for_all_layers_are_counted_before_embedding(project):
    """`layers: []` with the wrong number of layer_weights: one line naming the file, exit 2, nothing embedded."""
    from typer.testing import CliRunner

    from stack.cli import app

    assert CliRunner().invoke(app, ["folds"]).exit_code == 0
    result = CliRunner().invoke(app, ["fit", "minilm", "--set", "layers=[]", "--set", "layer_mode=weighted",
                                      "--set", "layer_weights=[1.0,2.0]"])
    assert result.exit_code == 2, repr(result.exception)
    assert "configs/members/minilm.yaml: layer_weights [1.0, 2.0] must be 3 non-negative numbers" in result.output
    assert not list((project / "cache").glob("minilm/embeddings/*/part-*.parquet"))


def test_finetune_layers_out_of_range_are_an_error_naming_the_file(project):
    from typer.testing import CliRunner

    from stack.cli import app

    assert CliRunner().invoke(app, ["folds"]).exit_code == 0
    result = CliRunner().invoke(app, ["fit", "minilm-ft", "--set", "layers=[20]", "--set", "epochs=1"])
    assert result.exit_code == 2, repr(result.exception)
    assert "configs/members/minilm-ft.yaml: layers [20] out of range: this backbone has 3 hidden states" in result.output
