"""A small multi-output MLP head: standardised inputs -> dropout -> Linear -> GELU -> dropout -> Linear (six
standardised targets), trained with AdamW, early stopping on a random share of the training rows, several seeds
averaged. Trained with torch (imported only in ``fit``); predictions are a numpy forward pass, so scoring needs
no torch and the saved model is its weight arrays.

    mlp = MLPHead(hidden=256, seeds=3).fit(X, Y)        # X (n, d), Y (n, k) -> predict (m, k)
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from stack.heads.base import RegressorBase
from stack.state import savable


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))  # exact GELU, as torch.nn.GELU()


@savable
class MLPHead(RegressorBase):
    FITTED = ("x_mean_", "x_scale_", "y_mean_", "y_scale_", "weights_", "epochs_")

    def __init__(self, hidden=256, input_dropout=0.1, dropout=0.3, lr=1e-3, weight_decay=1e-2, batch_size=64,
                 max_epochs=60, patience=8, valid_fraction=0.1, seeds=3, threads=0):
        self.hidden = hidden
        self.input_dropout = input_dropout
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.valid_fraction = valid_fraction
        self.seeds = seeds
        self.threads = threads

    def fit(self, X, y):
        from stack.runtime import set_threads

        X, Y = self._start_fit(X, y)
        set_threads(self.threads)
        self.x_mean_, self.x_scale_ = X.mean(0), X.std(0) + 1e-6
        self.y_mean_, self.y_scale_ = Y.mean(0), np.where(Y.std(0) > 0, Y.std(0), 1.0)
        Xs = ((X - self.x_mean_) / self.x_scale_).astype(np.float32)
        Ys = ((Y - self.y_mean_) / self.y_scale_).astype(np.float32)
        fits = [self._train(Xs, Ys, seed) for seed in range(self.seeds)]
        self.weights_ = [w for w, _ in fits]
        self.epochs_ = np.array([e for _, e in fits])
        return self

    def _train(self, X: np.ndarray, Y: np.ndarray, seed: int):
        """One seed -> ({w1, b1, w2, b2} of the epoch with the lowest held-out loss, epochs run)."""
        import torch

        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        order = rng.permutation(len(X))
        n_valid = max(1, int(len(X) * self.valid_fraction))
        valid, train = order[:n_valid], order[n_valid:]
        net = torch.nn.Sequential(torch.nn.Dropout(self.input_dropout), torch.nn.Linear(X.shape[1], self.hidden),
                                  torch.nn.GELU(), torch.nn.Dropout(self.dropout), torch.nn.Linear(self.hidden, Y.shape[1]))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
        best, best_state, waited, epochs = np.inf, None, 0, 0
        while epochs < self.max_epochs:
            epochs += 1
            net.train()
            shuffled = rng.permutation(train)
            for start in range(0, len(shuffled), self.batch_size):
                batch = shuffled[start:start + self.batch_size]
                opt.zero_grad()
                torch.mean((net(Xt[batch]) - Yt[batch]) ** 2).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                loss = torch.mean((net(Xt[valid]) - Yt[valid]) ** 2).item()
            if loss < best - 1e-5:
                best, waited = loss, 0
                best_state = [p.detach().numpy().astype(np.float64).copy() for p in (net[1].weight, net[1].bias,
                                                                                      net[4].weight, net[4].bias)]
            elif (waited := waited + 1) >= self.patience:
                break
        if best_state is None:  # the held-out loss was never finite: keep the last weights
            best_state = [p.detach().numpy().astype(np.float64).copy() for p in (net[1].weight, net[1].bias,
                                                                                  net[4].weight, net[4].bias)]
        w1, b1, w2, b2 = best_state
        return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, epochs

    def predict(self, X):
        X = self._start_predict(X)
        Xs = (X - self.x_mean_) / self.x_scale_
        out = np.mean([_gelu(Xs @ w["w1"].T + w["b1"]) @ w["w2"].T + w["b2"] for w in self.weights_], axis=0)
        return self._finish(out * self.y_scale_ + self.y_mean_)
