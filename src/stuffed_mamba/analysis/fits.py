"""The two state-size laws of section 5, their least-squares fits, and the paper's own fits.

    T_forget = a * N_S + b                  (section 5.2, figure 11)
    T_recall = a * (c ** N_S - 1) + b       (section 5.3, figure 9)

A law works in its own units: N_S in `x_unit` floats and T in `y_unit` tokens (the paper's:
millions of floats, thousands of tokens). `law.predict(x)` takes and returns values in those
units; `law.tokens(n_s_floats)` takes N_S in floats and returns tokens.

Fits are ordinary least squares (`scipy.optimize.curve_fit`); the parameter covariance is
scaled by the residual variance, and `band(x, level)` is the confidence band of the fitted
mean by the delta method with a Student t quantile: it needs more points than parameters.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

PAPER_UNITS = (1e6, 1e3)  # N_S in millions of floats, T in thousands of tokens


@dataclass(frozen=True)
class _Law:
    x_unit: float = PAPER_UNITS[0]
    y_unit: float = PAPER_UNITS[1]
    # set by fits; None for laws given by hand (the paper's)
    cov: np.ndarray | None = field(default=None, repr=False, compare=False)
    r2: float | None = None
    n: int | None = None
    source: str = ""

    n_params = 0

    @property
    def params(self) -> tuple[float, ...]:
        raise NotImplementedError

    def _f(self, x: np.ndarray, *p: float) -> np.ndarray:
        raise NotImplementedError

    def _jac(self, x: np.ndarray, *p: float) -> np.ndarray:
        """d f / d params: [len(x), n_params]."""
        raise NotImplementedError

    def predict(self, x) -> np.ndarray:
        """T in y_unit for N_S in x_unit."""
        return self._f(np.asarray(x, dtype=float), *self.params)

    def tokens(self, n_s_floats) -> np.ndarray:
        """T in tokens for N_S in floats."""
        return self.predict(np.asarray(n_s_floats, dtype=float) / self.x_unit) * self.y_unit

    @property
    def dof(self) -> int | None:
        return None if self.n is None else self.n - self.n_params

    def band(self, x, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) confidence band of the fitted mean at x (in x_unit); NaN without a covariance."""
        x = np.asarray(x, dtype=float)
        y = self.predict(x)
        if self.cov is None or not self.dof or self.dof <= 0 or not np.all(np.isfinite(self.cov)):
            nan = np.full_like(y, np.nan)
            return nan, nan
        from scipy.stats import t as student_t

        J = self._jac(x, *self.params)  # [n_x, n_params]
        var = np.einsum("xp,pq,xq->x", J, self.cov, J)
        half = student_t.ppf(0.5 + level / 2, self.dof) * np.sqrt(np.clip(var, 0, None))
        return y - half, y + half

    def stderr(self) -> tuple[float, ...]:
        if self.cov is None:
            return tuple(math.nan for _ in self.params)
        return tuple(float(s) for s in np.sqrt(np.clip(np.diag(self.cov), 0, None)))


@dataclass(frozen=True)
class LinearLaw(_Law):
    """T_forget = a * N_S + b."""

    a: float = 0.0
    b: float = 0.0
    n_params = 2

    @property
    def params(self) -> tuple[float, float]:
        return (self.a, self.b)

    def _f(self, x, a, b):
        return a * x + b

    def _jac(self, x, a, b):
        return np.stack([x, np.ones_like(x)], axis=-1)

    def formula(self, digits: int = 3) -> str:
        return f"T = {self.a:.{digits}f}*N_S {'-' if self.b < 0 else '+'} {abs(self.b):.{digits}f}"


@dataclass(frozen=True)
class ExponentialLaw(_Law):
    """T_recall = a * (c ** N_S - 1) + b."""

    a: float = 0.0
    c: float = 1.0
    b: float = 0.0
    n_params = 3

    @property
    def params(self) -> tuple[float, float, float]:
        return (self.a, self.c, self.b)

    def _f(self, x, a, c, b):
        return a * (np.power(c, x) - 1.0) + b

    def _jac(self, x, a, c, b):
        cx = np.power(c, x)
        return np.stack([cx - 1.0, a * x * np.power(c, x - 1.0), np.ones_like(x)], axis=-1)

    def formula(self, digits: int = 3) -> str:
        return f"T = {self.a:.{digits}f}*({self.c:.{digits}f}^N_S - 1) {'-' if self.b < 0 else '+'} {abs(self.b):.{digits}f}"


# The paper's fits (section 5.2 and 5.3; both report R^2 > 0.999). N_S in M floats, T in K tokens.
PAPER_T_FORGET = LinearLaw(a=5.172, b=-4.469, source="paper, section 5.2")
PAPER_T_RECALL = ExponentialLaw(a=4.756, c=1.365, b=-0.742, source="paper, section 5.3")


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> float:
    """1 - SSE/SST; NaN when y is constant."""
    sst = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - y_hat) ** 2)) / sst if sst > 0 else math.nan


def _check_xy(x, y, n_min: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({x.size} vs {y.size})")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    if x.size < n_min or np.unique(x).size < n_min:
        raise ValueError(f"need at least {n_min} distinct state sizes to fit, got {np.unique(x).size}")
    return x, y


def _cov_or_none(cov: np.ndarray, dof: int) -> np.ndarray | None:
    return cov if dof > 0 and np.all(np.isfinite(cov)) else None


def fit_linear(x, y, *, x_unit: float = PAPER_UNITS[0], y_unit: float = PAPER_UNITS[1]) -> LinearLaw:
    """Least-squares T = a*N_S + b; x, y already in x_unit, y_unit."""
    x, y = _check_xy(x, y, 2)
    X = np.stack([x, np.ones_like(x)], axis=-1)  # [n, 2]
    (a, b), *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ np.array([a, b])
    dof = x.size - 2
    cov = np.linalg.inv(X.T @ X) * (resid @ resid / dof) if dof > 0 else np.full((2, 2), np.inf)
    return LinearLaw(
        a=float(a),
        b=float(b),
        x_unit=x_unit,
        y_unit=y_unit,
        cov=_cov_or_none(cov, dof),
        r2=r_squared(y, X @ np.array([a, b])),
        n=x.size,
        source="fit",
    )


def fit_exponential(
    x, y, *, x_unit: float = PAPER_UNITS[0], y_unit: float = PAPER_UNITS[1], c_max: float | None = None
) -> ExponentialLaw:
    """Least-squares T = a*(c^N_S - 1) + b; x, y already in x_unit, y_unit.

    For a fixed c the law is linear in (a, b), so c starts from a grid search over log c
    (least squares for a, b at each) and curve_fit then refines all three together.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    x, y = _check_xy(x, y, 3)
    law = ExponentialLaw()
    # c^x_max up to ~e^30 covers every growth the data can show without overflow
    log_c_max = math.log(c_max) if c_max else 30.0 / max(float(np.abs(x).max()), 1e-12)
    best = None
    for log_c in np.geomspace(1e-6 * log_c_max, log_c_max, 400):
        X = np.stack([np.expm1(log_c * x), np.ones_like(x)], axis=-1)
        (a, b), *_ = np.linalg.lstsq(X, y, rcond=None)
        sse = float(np.sum((y - X @ np.array([a, b])) ** 2))
        if best is None or sse < best[0]:
            best = (sse, a, math.exp(log_c), b)
    p0 = best[1:]
    try:
        with warnings.catch_warnings():  # 3 points: an exact fit, no covariance (reported as None)
            warnings.simplefilter("ignore", OptimizeWarning)
            p, cov = curve_fit(law._f, x, y, p0=p0, jac=law._jac, maxfev=20000)
    except RuntimeError:  # did not converge: keep the grid's best, without a covariance
        p, cov = np.array(p0), np.full((3, 3), np.inf)
    dof = x.size - 3
    a, c, b = (float(v) for v in p)
    return ExponentialLaw(
        a=a,
        c=c,
        b=b,
        x_unit=x_unit,
        y_unit=y_unit,
        cov=_cov_or_none(cov, dof),
        r2=r_squared(y, law._f(x, a, c, b)),
        n=x.size,
        source="fit",
    )


def pick_unit(values, candidates=(1e6, 1e3, 1.0)) -> float:
    """The largest unit in which the largest value is still >= 1 (M, K or 1)."""
    top = float(np.max(np.abs(np.asarray(values, dtype=float)))) if len(values) else 1.0
    for u in candidates:
        if top >= u:
            return u
    return candidates[-1]


def unit_name(unit: float) -> str:
    return {1e6: "M", 1e3: "K", 1.0: ""}.get(unit, f"x{unit:g}")
