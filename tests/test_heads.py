"""Heads over cached embeddings (``kind: head``): the kernel ridge recovers a known signal and chooses its width and
alpha by exact leave-one-out, the member reads only caches (never a backbone), refuses a fine-tuned member's OOF
embeddings, is fitted in the right DVC stage, and is scored through its input (stack predict, bundles)."""

from __future__ import annotations

import numpy as np
import pytest

from stack.heads.kernel_ridge import KernelRidge, loo_dual, sq_dists
from stack.heads.ridge import Ridge

from conftest import FB3, edit_yaml, ok, refused


def signal(n=400, d=12, seed=0):
    """Unit rows and two targets that are smooth non-linear functions of them (plus a little noise)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = np.column_stack([np.sin(4 * X[:, 0]) + np.cos(3 * X[:, 1]), 2 * X[:, 2] * X[:, 3]])
    return X, Y + rng.normal(0, 0.05, Y.shape)


def test_kernel_ridge_recovers_a_nonlinear_signal_that_a_linear_ridge_misses():
    X, Y = signal()
    krr, ridge = KernelRidge().fit(X[:300], Y[:300]), Ridge().fit(X[:300], Y[:300])
    err = lambda m: np.sqrt(((m.predict(X[300:]) - Y[300:]) ** 2).mean(0))  # noqa: E731
    assert (err(krr) < 0.35 * Y[300:].std(0)).all()  # most of the variance, out of sample
    assert (err(krr) < 0.7 * err(ridge)).all()


def test_each_target_keeps_the_width_and_alpha_of_least_leave_one_out_error():
    X, Y = signal(n=150)
    krr = KernelRidge(gamma_scales=(0.25, 1.0, 4.0), alphas=(1e-3, 1e-1, 10.0)).fit(X, Y)
    D = sq_dists(X, X)
    median = np.median(D[np.triu_indices(len(D), 1)])
    for t in range(2):
        errors = {(s, a): loo_dual(np.exp(-s / (2 * median) * D), Y[:, [t]], np.array([a]))[0][0, 0]
                  for s in (0.25, 1.0, 4.0) for a in (1e-3, 1e-1, 10.0)}
        assert tuple(krr.chosen_[t]) == min(errors, key=errors.get)
        # the leave-one-out error of the formula = refitting without each row in turn (intercept unpenalised)
        scale, alpha = krr.chosen_[t]
        K = np.exp(-scale / (2 * median) * D)
        refits = []
        for i in range(len(X)):
            keep = np.arange(len(X)) != i
            Kk, yk = K[np.ix_(keep, keep)], Y[keep, t]
            H = np.eye(len(yk)) - 1.0 / len(yk)
            dual = H @ np.linalg.solve(H @ Kk @ H + alpha * np.eye(len(yk)), H @ (yk - yk.mean()))
            refits.append(K[i, keep] @ dual - Kk.mean(0) @ dual + yk.mean() - Y[i, t])
        np.testing.assert_allclose(np.mean(np.square(refits)), errors[(scale, alpha)], rtol=1e-6)


def test_average_of_fold_heads_is_their_mean_prediction_on_shared_rows():
    X, Y = signal(n=200)
    folds = np.arange(200) % 4
    heads = [KernelRidge(gamma_scales=(0.5, 1.0)).fit(X[folds != k], Y[folds != k]) for k in range(4)]
    one = KernelRidge.average(heads)
    assert len(one.support_) == 200  # every row once, not 4 x 150
    np.testing.assert_allclose(one.predict(X[:30]), np.mean([h.predict(X[:30]) for h in heads], axis=0), atol=1e-10)


def test_statistics_joined_as_a_block_carry_their_signal_whatever_their_raw_scale():
    from stack.heads.prepared import PreparedHead

    X, Y = signal(n=400)
    rng = np.random.default_rng(1)
    S = np.column_stack([rng.normal(500, 200, 400), rng.normal(0, 1e-3, 400)])  # two statistics, far apart in scale
    Y = Y + np.column_stack([S[:, 0] / 400, np.zeros(400)])  # target 0 also rises with the first statistic
    both, tr, te = np.hstack([X, S]), slice(0, 300), slice(300, None)
    err = lambda m, A: np.sqrt(((m.fit(A[tr], Y[tr]).predict(A[te]) - Y[te]) ** 2).mean(0))  # noqa: E731
    joined, raw = err(PreparedHead(KernelRidge(), n_stats=2, block=True), both), err(KernelRidge(), both)
    alone = err(KernelRidge(), X)
    assert joined[0] < 0.8 * min(alone[0], raw[0])  # left out, the statistic's signal is missed
    assert joined[1] < 0.6 * raw[1]  # unscaled, the statistic drowns the embedding's signal in the kernel
    assert joined[1] < 1.5 * alone[1]  # joined, the target it does not drive loses little
    head = PreparedHead(KernelRidge(), n_stats=2, block=True).fit(both[tr], Y[tr])
    np.testing.assert_allclose(head.mean_, S[tr].mean(0))  # standardised with the training rows' statistics only
    Xp = head._prepare(both[te])
    np.testing.assert_allclose(np.linalg.norm(Xp, axis=1), 1.0)  # unit rows, the statistics block one of them


def test_pca_keeps_the_training_rows_leading_directions_for_trees():
    from stack.heads.lgbm import LGBMBlender
    from stack.heads.prepared import PreparedHead

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(500, 2)) * [3.0, 1.0]
    Q = np.linalg.qr(rng.normal(size=(40, 2)))[0].T  # 2 orthonormal directions in 40 columns
    E = latent @ Q + rng.normal(0, 0.05, (500, 40))
    Y = np.column_stack([np.sign(latent[:, 0]) + latent[:, 1] ** 2, np.abs(latent[:, 1])])
    head = PreparedHead(LGBMBlender(n_jobs=1), pca=2).fit(E[:400], Y[:400])
    np.testing.assert_allclose(np.abs(head.components_ @ Q.T), np.eye(2), atol=0.01)  # the latent axes, in order
    err = np.sqrt(((head.predict(E[400:]) - Y[400:]) ** 2).mean(0))
    assert (err < 0.5 * Y[400:].std(0)).all()
    assert PreparedHead(Ridge(), pca=64).fit(E[:30], Y[:30]).components_.shape == (30, 40)  # fewer rows than asked


# -- the member ----------------------------------------------------------------------------------------------------



@pytest.fixture
def fitted_input(project):
    edit_yaml(project / "params.yaml", heads={"minilm-krr": "minilm"})
    edit_yaml(project / "configs" / "members" / "minilm-krr.yaml", layers=[1, 2])
    ok("folds")
    ok("fit", "minilm")
    return project


@pytest.mark.parametrize("sets", [[], ["--set", "stats=block"]])  # the statistics come from the essays, not a model
def test_a_head_reads_only_the_cache_of_its_input_and_never_loads_a_backbone(fitted_input, monkeypatch, sets):
    import transformers

    from stack import cache
    from stack.backbones import loading

    def no_backbone(*args, **kwargs):
        raise AssertionError("a head loaded a backbone")

    monkeypatch.setattr(loading, "load_backbone", no_backbone)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_backbone)
    ok("fit", "minilm-krr", *sets)
    train, meta = cache.read_member("minilm-krr", "train", FB3)
    _, source = cache.read_member("minilm", "train", FB3)
    assert meta["kind"] == "head" and meta["input"] == "minilm" and meta["input_config"] == source["config"]
    assert not cache.emb_columns(train) and np.isfinite(train.filter(like="pred_").to_numpy()).all()
    assert [b["layer"] for b in meta["input_meta"]["blocks"]] == [0, 1, 2]  # the tiny encoder's 3 hidden states


def test_a_head_over_a_fine_tuned_members_oof_embeddings_is_refused(fitted_input):
    edit_yaml(fitted_input / "configs" / "members" / "minilm-ft.yaml", epochs=1, max_len=64, precision="fp32")
    ok("fit", "minilm-ft")
    edit_yaml(fitted_input / "params.yaml", heads={"minilm-krr": "minilm-ft"})
    out = refused("fit", "minilm-krr", "--set", "input=minilm-ft", "--set", "layers=[]")
    assert "input 'minilm-ft' is a finetune member: its OOF embeddings come from fold models trained" in out


@pytest.mark.parametrize("edit, match", [
    (lambda p: edit_yaml(p / "params.yaml", members=["minilm", "minilm-krr"], heads={}),
     "'minilm-krr' is a head over 'minilm''s cache: list it under `heads`"),
    (lambda p: edit_yaml(p / "params.yaml", heads={"minilm-krr": "mpnet"}),
     "heads.minilm-krr is 'mpnet' but configs/members/minilm-krr.yaml reads input 'minilm'"),
    (lambda p: edit_yaml(p / "params.yaml", heads={"minilm-krr": "minilm", "tfidf": "minilm"}),
     "'tfidf' is a tfidf member, not a head"),
])
def test_heads_are_listed_where_dvc_fits_them_after_their_input(fitted_input, edit, match):
    edit(fitted_input)
    name = "tfidf" if "tfidf" in match else "minilm-krr"
    assert match in refused("fit", name)


def test_layers_the_input_does_not_have_are_a_clear_error(fitted_input):
    assert "has no hidden state 7 in its cache (it has [0, 1, 2])" in refused("fit", "minilm-krr", "--set", "layers=[7]")


@pytest.mark.parametrize("sets, match", [
    (["stats=all"], "stats 'all' is not one of none, append, block"),
    (["stats=block", "normalize=none"], "stats: block joins the statistics as one more unit-length block, which needs "
                                         "normalize: layer (got 'none')"),
    (["pca=-1"], "pca must be 0 (none) or a number of components, got -1"),
])
def test_statistics_and_pca_keys_are_checked_before_anything_is_fitted(fitted_input, sets, match):
    assert match in refused("fit", "minilm-krr", *[a for s in sets for a in ("--set", s)])
    assert not (fitted_input / "cache" / "minilm-krr").exists()


def test_predict_and_a_bundle_score_a_head_through_its_input(fitted_input, tmp_path):
    import pandas as pd

    from conftest import TARGETS

    ok("fit", "minilm-krr")
    ok("blend", "--models", "minilm-krr")  # the blend weighs only the head; its input still has to travel
    ok("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv")
    sub, scores = pd.read_csv("submission.csv"), pd.read_csv("scores.csv")
    np.testing.assert_allclose(scores[list(TARGETS)].to_numpy(), sub[list(TARGETS)].to_numpy(), atol=1e-6, rtol=0)
    ok("export", str(tmp_path / "bundle"))
    assert sorted(p.name for p in (tmp_path / "bundle" / "members").iterdir()) == ["minilm", "minilm-krr"]
    ok("predict", "--bundle", str(tmp_path / "bundle"), "--input", "data/fb3/test.csv", "--out", "bundled.csv")
    np.testing.assert_allclose(pd.read_csv("bundled.csv")[list(TARGETS)].to_numpy(), sub[list(TARGETS)].to_numpy(),
                               atol=1e-6, rtol=0)
    # the input refitted with another config, the head not: scoring refuses rather than mixing versions
    ok("fit", "minilm", "--set", "pooling=[max]")
    out = refused("predict", "--input", "data/fb3/test.csv", "--out", "x.csv")
    assert "member 'minilm-krr' was fitted on another version of 'minilm'" in out
    out = refused("export", str(tmp_path / "bundle2"))
    assert "member 'minilm-krr' was fitted on another version of 'minilm'" in out and "before exporting" in out
    out = refused("blend", "--models", "minilm-krr")  # its input is not blended: read from the cache's footer
    assert "member 'minilm-krr' was fitted on another version of 'minilm'" in out


def test_mlp_head_learns_a_nonlinear_signal_and_predicts_without_torch():
    from stack.heads.mlp import MLPHead

    X, Y = signal(n=600)
    mlp = MLPHead(seeds=2).fit(X[:500], Y[:500])
    err = np.sqrt(((mlp.predict(X[500:]) - Y[500:]) ** 2).mean(0))
    assert (err < 0.6 * Y[500:].std(0)).all()
    assert len(mlp.weights_) == 2 and set(mlp.weights_[0]) == {"w1", "b1", "w2", "b2"}
    assert all(isinstance(w, np.ndarray) for seed in mlp.weights_ for w in seed.values())  # numpy forward pass


def test_average_counts_every_copy_of_a_duplicated_row():
    X, Y = signal(n=120)
    X[10], X[11], X[12] = X[5], X[5], X[5]  # the same essay text four times: identical embedding rows
    folds = np.arange(120) % 3
    heads = [KernelRidge(gamma_scales=(1.0,)).fit(X[folds != k], Y[folds != k]) for k in range(3)]
    one = KernelRidge.average(heads)
    assert len(one.support_) == 117
    np.testing.assert_allclose(one.predict(X[:20]), np.mean([h.predict(X[:20]) for h in heads], axis=0), atol=1e-10)


@pytest.mark.parametrize("sets", [["head=svr"], ["head=ridge"], ["head=mlp", "mlp_seeds=1"], ["stats=block"],
                                  ["head=lgbm", "stats=append", "pca=8"], ["head=mlp", "stats=append", "mlp_seeds=1"]])
def test_every_head_model_fits_through_the_member_and_scores_like_the_cache(fitted_input, sets):
    import pandas as pd

    from conftest import TARGETS

    ok("fit", "minilm-krr", *[a for s in sets for a in ("--set", s)])
    ok("blend", "--models", "minilm-krr")
    ok("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv")
    sub, scores = pd.read_csv("submission.csv"), pd.read_csv("scores.csv")
    np.testing.assert_allclose(scores[list(TARGETS)].to_numpy(), sub[list(TARGETS)].to_numpy(), atol=1e-6, rtol=0)


def test_a_saved_mlp_head_predicts_in_a_process_without_torch(tmp_path):
    import subprocess
    import sys

    from stack import state
    from stack.heads.mlp import MLPHead

    X, Y = signal(n=120)
    mlp = MLPHead(hidden=8, max_epochs=3, seeds=1).fit(X[:100], Y[:100])
    state.save(mlp, tmp_path / "mlp")
    np.save(tmp_path / "x.npy", X[100:])
    code = ("import sys\n"
            "class NoTorch:  # any import of torch now fails\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import numpy as np; from stack import state; import stack.heads.mlp\n"
            f"p = state.load(__import__('pathlib').Path({str(tmp_path / 'mlp')!r})).predict(np.load({str(tmp_path / 'x.npy')!r}))\n"
            f"np.save({str(tmp_path / 'p.npy')!r}, p)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), mlp.predict(X[100:]), atol=1e-12)
