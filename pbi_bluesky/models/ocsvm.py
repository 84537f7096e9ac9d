"""One-class SVM fitted with scikit-learn, stored and evaluated as plain arrays.

The fitted model is exported as support vectors, dual coefficients, intercept and the RBF
gamma; :meth:`RBFOneClass.decision` evaluates ``sum_i a_i exp(-gamma |x - sv_i|^2) + b``
in numpy (identical to ``OneClassSVM.decision_function``, faster, and pickle-free).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["RBFOneClass"]


@dataclass
class RBFOneClass:
    """A fitted RBF one-class SVM as arrays."""

    support_vectors: NDArray[np.float64]
    dual_coef: NDArray[np.float64]
    intercept: float
    gamma: float

    @classmethod
    def fit(cls, x: NDArray, nu: float = 0.05, gamma: float | str = "scale") -> RBFOneClass:
        """Fit scikit-learn's ``OneClassSVM`` and keep only its arrays."""
        from sklearn.svm import OneClassSVM

        x = np.asarray(x, dtype=np.float64)
        svm = OneClassSVM(kernel="rbf", nu=nu, gamma=gamma).fit(x)
        return cls(
            np.asarray(svm.support_vectors_, dtype=np.float64),
            np.asarray(svm.dual_coef_[0], dtype=np.float64),
            float(svm.intercept_[0]),
            float(svm._gamma),
        )

    def decision(self, x: NDArray) -> NDArray[np.float64]:
        """Signed distance to the boundary (positive inside = normal)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        sq = (
            (x**2).sum(1)[:, None]
            + (self.support_vectors**2).sum(1)[None, :]
            - 2.0 * x @ self.support_vectors.T
        )
        return np.exp(-self.gamma * np.maximum(sq, 0.0)) @ self.dual_coef + self.intercept

    def score(self, x: NDArray) -> NDArray[np.float64]:
        """Anomaly score: higher = more anomalous (``-decision``)."""
        return -self.decision(x)
