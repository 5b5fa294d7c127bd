"""Every registered blender passes scikit-learn's estimator checks and recovers known weights on synthetic data;
the heads (stack.heads: Ridge, KernelSVR) compute what scikit-learn's estimators compute."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from stack.blend.hill_climb import HillClimbBlender
from stack.blend.nelder_mead import NelderMeadBlender
from stack.blend.registry import BLENDERS, get_blender
from stack.blend.stacked import StackBlender
from stack.errors import StackError
from stack.heads.lgbm import LGBMBlender
from stack.heads.ridge import Ridge
from stack.heads.svr import KernelSVR

ESTIMATORS = [Ridge(), Ridge(standardize=False), KernelSVR(), KernelSVR(scaling="l2"), KernelSVR(scaling="none"),
              LGBMBlender(n_estimators=200, learning_rate=0.1, early_stopping_rounds=20, n_jobs=1),
              HillClimbBlender(), HillClimbBlender(negative=True), NelderMeadBlender(), NelderMeadBlender(bounds=(-1, 2)),
              StackBlender()]


# Every check applies (multi-output included), so none is marked as an expected failure.
@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_registry_covers_the_issue_and_rejects_unknown_names():
    assert set(BLENDERS) == {"ridge", "lgbm", "svr", "hill", "nelder-mead", "stack"}
    with pytest.raises(StackError, match="valid: hill, lgbm, nelder-mead, ridge, stack, svr"):
        get_blender("hill-climb")


def mixed(n=600, coef=(0.7, 0.3, 0.0), seed=0):
    """Three models' predictions (n, 6 * 3) and y = sum coef_i * model_i, same weights for every target."""
    rng = np.random.default_rng(seed)
    models = [rng.normal(3, 0.6, (n, 6)) for _ in coef]
    y = sum(c * m for c, m in zip(coef, models))
    return np.hstack(models), y


@pytest.mark.parametrize("est", [HillClimbBlender(), NelderMeadBlender(), NelderMeadBlender(bounds=(0, 1))], ids=repr)
def test_weight_blenders_recover_known_weights(est):
    P, y = mixed()
    est = clone(est).fit(P, y)
    np.testing.assert_allclose(est.weights_, np.tile([0.7, 0.3, 0.0], (6, 1)), atol=1e-3)
    np.testing.assert_allclose(est.predict(P), y, atol=1e-3)


def test_hill_uses_negative_weights_only_when_allowed():
    P, y = mixed(coef=(1.3, -0.3, 0.0))
    neg = HillClimbBlender(negative=True).fit(P, y)
    pos = HillClimbBlender(negative=False).fit(P, y)
    np.testing.assert_allclose(neg.weights_, np.tile([1.3, -0.3, 0.0], (6, 1)), atol=1e-3)
    assert (pos.weights_ >= 0).all()
    assert np.sqrt(np.mean((neg.predict(P) - y) ** 2)) < 0.5 * np.sqrt(np.mean((pos.predict(P) - y) ** 2))
    np.testing.assert_allclose(neg.weights_.sum(axis=1), 1.0)


def test_nelder_mead_respects_bounds():
    P, y = mixed(coef=(1.3, -0.3, 0.0))
    free = NelderMeadBlender().fit(P, y)
    bounded = NelderMeadBlender(bounds=(0.0, 1.0)).fit(P, y)
    np.testing.assert_allclose(free.weights_, np.tile([1.3, -0.3, 0.0], (6, 1)), atol=1e-3)
    assert bounded.weights_.min() >= 0.0 and bounded.weights_.max() <= 1.0


def test_hill_weights_differ_per_target():
    rng = np.random.default_rng(1)
    a, b = rng.normal(3, 0.6, (400, 6)), rng.normal(3, 0.6, (400, 6))
    y = a.copy()
    y[:, 3] = b[:, 3]  # target 3 comes from model b only
    est = HillClimbBlender().fit(np.hstack([a, b]), y)
    np.testing.assert_allclose(est.weights_[3], [0.0, 1.0])
    np.testing.assert_allclose(est.weights_[0], [1.0, 0.0])


def test_stack_is_the_mean_of_its_members():
    P, y = mixed()
    emb = np.random.default_rng(2).normal(size=(len(P), 5))
    X = np.hstack([emb, P])
    est = StackBlender([("ridge", Ridge(), list(range(5))), ("hill", HillClimbBlender(), list(range(5, X.shape[1])))]).fit(X, y)
    ridge = Ridge().fit(emb, y).predict(emb)
    hill = HillClimbBlender().fit(P, y).predict(P)
    np.testing.assert_allclose(est.predict(X), (ridge + hill) / 2)


def test_feature_blenders_learn_a_linear_signal():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 8))
    y = np.column_stack([X[:, 0] + 0.5 * X[:, 1], X[:, 2] - X[:, 3]]) + 3
    Xt = rng.normal(size=(200, 8))
    yt = np.column_stack([Xt[:, 0] + 0.5 * Xt[:, 1], Xt[:, 2] - Xt[:, 3]]) + 3
    for est in (Ridge(), KernelSVR(C=10.0), LGBMBlender(n_estimators=300, n_jobs=1)):
        err = np.sqrt(np.mean((est.fit(X, y).predict(Xt) - yt) ** 2))
        assert err < 0.6 * yt.std(), (est, err)  # far better than predicting the mean


def test_lgbm_early_stopping_never_sees_the_rows_it_predicts():
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(200, 4)), rng.normal(size=200)
    est = LGBMBlender(n_estimators=500, n_jobs=1, early_stopping_rounds=10).fit(X, y)
    # pure noise: early stopping on the inner split must stop long before 500 trees
    assert est.best_iterations_[0] < 100


@pytest.mark.parametrize("n,p", [(120, 40), (60, 150)], ids=["primal", "dual"])
def test_ridge_matches_sklearn_ridgecv_per_target(n, p):
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(5)
    X = rng.normal(size=(n, p)) * rng.uniform(0.5, 3, p) + rng.normal(size=p)
    Y = X[:, :6] @ rng.normal(size=(6, 6)) + rng.normal(0, 3, (n, 6)) + 2
    alphas = np.logspace(-1, 5, 13)
    ref = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas, alpha_per_target=True)).fit(X, Y)
    ours = Ridge(alphas=tuple(alphas)).fit(X, Y)
    assert len(set(ours.alpha_)) > 1  # the targets really chose different alphas
    np.testing.assert_allclose(ours.alpha_, ref[-1].alpha_)
    X_new = rng.normal(size=(30, p))
    np.testing.assert_allclose(ours.predict(X_new), ref.predict(X_new), atol=1e-8)


@pytest.mark.parametrize("n,p", [(300, 80), (120, 400)], ids=["primal", "dual"])
def test_ridge_on_sparse_rows_matches_sklearn_ridgecv_per_target(n, p):
    import scipy.sparse as sp
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(6)
    X = sp.random(n, p, density=0.1, format="csr", random_state=1) * 3  # TF-IDF-like: used as it is, never densified
    Y = np.asarray(X[:, :6] @ rng.normal(size=(6, 6))) + rng.normal(0, 0.5, (n, 6)) + 2
    alphas = np.logspace(-2, 3, 11)
    ref = RidgeCV(alphas=alphas, alpha_per_target=True).fit(X, Y)
    ours = Ridge(alphas=tuple(alphas)).fit(X, Y)
    assert len(set(ours.alpha_)) > 1
    np.testing.assert_allclose(ours.alpha_, ref.alpha_)
    X_new = sp.random(30, p, density=0.1, format="csr", random_state=2)
    np.testing.assert_allclose(ours.predict(X_new), ref.predict(X_new), atol=1e-8)


@pytest.mark.parametrize("scaling", ["standard", "l2", "none"])
@pytest.mark.parametrize("gamma", ["scale", 0.3])
def test_kernel_svr_matches_sklearn_svr_per_target(scaling, gamma):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVR

    rng = np.random.default_rng(7)
    X = rng.normal(size=(150, 7)) * rng.uniform(0.5, 3, 7) + 1
    Y = np.column_stack([np.sin(X[:, 0]), X[:, 1] ** 2 / 5, X[:, 2] - X[:, 3]]) + rng.normal(0, 0.1, (150, 3))
    X_new = rng.normal(size=(40, 7)) * 2
    ours = KernelSVR(C=3.0, epsilon=0.05, gamma=gamma, scaling=scaling).fit(X, Y)
    scaler = {"standard": StandardScaler(), "l2": Normalizer(), "none": None}[scaling]
    refs = [make_pipeline(scaler, SVR(kernel="rbf", C=3.0, epsilon=0.05, gamma=gamma)).fit(X, Y[:, t]) for t in range(3)]
    np.testing.assert_allclose(ours.gamma_, refs[0][-1]._gamma, rtol=1e-12)  # "scale" = 1 / (d * var of scaled X)
    want = np.column_stack([r.predict(X_new) for r in refs])
    # libsvm stops within tol=1e-3 of the optimum; kernels that differ in the last bit may stop at another point
    np.testing.assert_allclose(ours.predict(X_new), want, rtol=0, atol=2e-3)
    assert np.abs(want - Y.mean(0)).max() > 0.5  # the targets are really fitted, not predicted by their mean


def test_kernel_svr_refuses_an_unknown_scaling():
    with pytest.raises(ValueError, match="unknown scaling 'minmax' \\(valid: standard, l2, none\\)"):
        KernelSVR(scaling="minmax").fit(np.zeros((4, 2)), np.zeros(4))
