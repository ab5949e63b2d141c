"""Comparative evaluation: ratings and ranks of models from pairwise battles (judge or human
votes).

* ``elo``: online Elo. Each battle moves the two ratings by ``k * (score - expected)``, in the
  order given, so the result depends on the order of the battles (the same battles shuffled
  give different ratings, and recent battles weigh more). Good for a live leaderboard.
* ``bradley_terry``: the maximum-likelihood fit of P(i beats j) = 1 / (1 + base**((r_j - r_i)
  / scale)) to all battles at once (order does not matter), with a small Gaussian (ridge)
  prior on the log-strengths so that a model that never lost still gets a finite rating,
  bootstrap confidence intervals (battles resampled with replacement, seeded) and ranks. Use
  it to report results.

Both count a tie as half a win for each side and report on the Elo scale (``initial`` for an
average model, ``scale`` points for a factor ``base`` in odds). A model that appears in no
battle cannot be rated: naming one in ``models`` is a ConfigError, not a silent default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from fmstack.errors import ConfigError

Outcome = Literal["a", "b", "tie"]
OUTCOMES: tuple[str, ...] = ("a", "b", "tie")


class Battle(NamedTuple):
    """One comparison: ``winner`` is "a", "b" or "tie". Plain (a, b, winner) tuples work too,
    so a PairVerdict's winner drops straight in."""

    a: str
    b: str
    winner: Outcome


@dataclass(frozen=True)
class Rating:
    """One model's standing. ``ci_low``/``ci_high`` bound ``rating`` (None for Elo, which has
    no interval); ``rank`` is 1 for the best point estimate; ``rank_low``/``rank_high`` are the
    best and worst rank seen in the central bootstrap interval (None for Elo)."""

    model: str
    rating: float
    ci_low: float | None
    ci_high: float | None
    rank: int
    rank_low: int | None
    rank_high: int | None
    battles: int


def _check(
    battles: Iterable[Sequence[Any]], models: Sequence[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Model names, and per battle the index of a, of b, and a's score (1, 0.5 or 0)."""
    rows = list(battles)
    if not rows:
        raise ConfigError("no battles to rate")
    seen: dict[str, int] = {}
    a_idx, b_idx, score = [], [], []
    for n, row in enumerate(rows, start=1):
        if len(row) != 3:
            raise ConfigError(f"battle {n}: expected (model_a, model_b, winner), got {row!r}")
        a, b, winner = row
        if not (isinstance(a, str) and isinstance(b, str)) or not a or not b:
            raise ConfigError(f"battle {n}: model names must be non-empty strings, got "
                              f"{a!r} and {b!r}")
        if a == b:
            raise ConfigError(f"battle {n}: model {a!r} against itself")
        if winner not in OUTCOMES:
            raise ConfigError(f"battle {n}: winner must be 'a', 'b' or 'tie', got {winner!r}")
        a_idx.append(seen.setdefault(a, len(seen)))
        b_idx.append(seen.setdefault(b, len(seen)))
        score.append({"a": 1.0, "b": 0.0, "tie": 0.5}[winner])
    names = list(seen)
    if models is not None:
        idle = [m for m in models if m not in seen]
        if idle:
            raise ConfigError(f"model {', '.join(map(repr, idle))} has no battles, so it "
                              "cannot be rated (drop it or add its battles)")
        names = list(dict.fromkeys(models)) + [m for m in names if m not in models]
        order = {m: i for i, m in enumerate(names)}
        remap = np.array([order[m] for m in seen])
        return names, remap[a_idx], remap[b_idx], np.array(score)
    return names, np.array(a_idx), np.array(b_idx), np.array(score)


def _ranks(values: np.ndarray) -> np.ndarray:
    """1 for the highest value; equal values share the better rank."""
    return np.array([1 + int(np.sum(values > v)) for v in values])


def elo(
    battles: Iterable[Sequence[Any]],
    *,
    k: float = 32.0,
    initial: float = 1000.0,
    scale: float = 400.0,
    base: float = 10.0,
    models: Sequence[str] | None = None,
) -> list[Rating]:
    """Online Elo over ``battles`` in the order given, best first. Every model starts at
    ``initial``; after each battle ``r_a += k * (s_a - E_a)`` and ``r_b -= k * (s_a - E_a)``
    with ``E_a = 1 / (1 + base**((r_b - r_a) / scale))``. Order-dependent (see the module
    docstring); ``models`` lists models that must be present, first in that order."""
    if k <= 0 or scale <= 0 or base <= 1:
        raise ConfigError(f"elo needs k > 0, scale > 0 and base > 1, got k={k}, scale={scale}, "
                          f"base={base}")
    names, a_idx, b_idx, score = _check(battles, models)
    ratings = np.full(len(names), float(initial))
    for a, b, s in zip(a_idx.tolist(), b_idx.tolist(), score.tolist(), strict=True):
        expected = 1.0 / (1.0 + base ** ((ratings[b] - ratings[a]) / scale))
        delta = k * (s - expected)
        ratings[a] += delta
        ratings[b] -= delta
    counts = np.bincount(np.concatenate([a_idx, b_idx]), minlength=len(names))
    ranks = _ranks(ratings)
    out = [Rating(m, float(ratings[i]), None, None, int(ranks[i]), None, None, int(counts[i]))
           for i, m in enumerate(names)]
    return sorted(out, key=lambda r: (r.rank, r.model))


def _fit(wins: np.ndarray, ridge: float, start: np.ndarray | None = None) -> np.ndarray:
    """Log-strengths maximising sum_ij wins[i, j] * log sigmoid(t_i - t_j) - ridge/2 |t|^2.

    The likelihood only sees differences, so the ridge term also fixes the level: at the
    optimum the strengths sum to zero (shifting them all changes only the penalty)."""
    from scipy.optimize import minimize

    games = wins + wins.T
    n = len(wins)

    def loss(t: np.ndarray) -> tuple[float, np.ndarray]:
        diff = t[:, None] - t[None, :]
        # log sigmoid(d) = -log1p(exp(-d)), written stably for both signs.
        nll = float(np.sum(wins * np.logaddexp(0.0, -diff))) + 0.5 * ridge * float(t @ t)
        p = 1.0 / (1.0 + np.exp(-diff))  # P(i beats j)
        grad = -np.sum(wins - games * p, axis=1) + ridge * t
        return nll, grad

    result = minimize(loss, np.zeros(n) if start is None else start, jac=True, method="L-BFGS-B",
                      options={"gtol": 1e-9, "maxiter": 1000})
    t: np.ndarray = result.x
    return t - t.mean()


def _fit_many(wins: np.ndarray, ridge: float, start: np.ndarray) -> np.ndarray:
    """``_fit`` for a stack of wins matrices (bootstrap resamples) at once: Newton's method,
    vectorised over the stack and started from the full-data fit, which the resamples'
    optima lie close to. Newton takes a handful of steps there where L-BFGS takes dozens of
    Python-level iterations per resample; a row that has not converged falls back to
    ``_fit``."""
    count, n, _ = wins.shape
    games = wins + wins.transpose(0, 2, 1)
    eye, diag = np.eye(n), np.arange(n)
    # Without a ridge the Hessian is singular along "all strengths + c"; the gradient has no
    # component there, so adding that direction back changes no fixed point.
    gauge = np.full((n, n), 1.0 / n) if ridge == 0 else 0.0
    t = np.repeat(start[None, :], count, axis=0)
    done = np.zeros(count, dtype=bool)
    with np.errstate(over="ignore"):
        for _ in range(50):
            p = 1.0 / (1.0 + np.exp(t[:, None, :] - t[:, :, None]))  # P(i beats j)
            grad = -np.sum(wins - games * p, axis=2) + ridge * t
            w = games * p * (1.0 - p)
            hess = (ridge * eye + gauge)[None] - w
            hess[:, diag, diag] += w.sum(axis=2)
            try:
                step = np.linalg.solve(hess, grad[..., None])[..., 0]
            except np.linalg.LinAlgError:
                break
            size = np.abs(step).max(axis=1)
            # Cap each step at 1 in log-strength: a full Newton step can overshoot far from
            # the optimum, where the logistic likelihood is nearly flat.
            step = step / np.maximum(size, 1.0)[:, None]
            t = np.where(done[:, None], t, t - step)
            done |= size < 1e-10
            if done.all():
                break
    out: np.ndarray = t - t.mean(axis=1, keepdims=True)
    for row in np.flatnonzero(~done | ~np.isfinite(out).all(axis=1)):
        out[row] = _fit(wins[row], ridge, start)
    return out


def bradley_terry(
    battles: Iterable[Sequence[Any]],
    *,
    initial: float = 1000.0,
    scale: float = 400.0,
    base: float = 10.0,
    ridge: float = 0.01,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    models: Sequence[str] | None = None,
) -> list[Rating]:
    """Bradley–Terry ratings with bootstrap intervals, best first.

    ``rating = initial + scale * t / ln(base)`` for fitted log-strengths ``t`` centred on 0,
    so ratings average ``initial`` and a ``scale``-point gap means odds of ``base`` to 1.
    ``ridge`` is the precision of a N(0, 1/ridge) prior on ``t`` (0 gives the plain MLE, which
    is infinite for a model that never lost or never won; such a model's rating then comes
    from the prior, and its interval understates the uncertainty, since every resample has
    it unbeaten too). ``bootstrap`` fits on battles
    resampled with replacement (seeded with ``seed``) give the ``confidence`` percentile
    interval of each rating and of each rank; ``bootstrap=0`` skips them.
    """
    if scale <= 0 or base <= 1 or ridge < 0:
        raise ConfigError(f"bradley_terry needs scale > 0, base > 1 and ridge >= 0, got "
                          f"scale={scale}, base={base}, ridge={ridge}")
    if bootstrap < 0 or not 0 < confidence < 1:
        raise ConfigError(f"bootstrap must be >= 0 and 0 < confidence < 1, got "
                          f"bootstrap={bootstrap}, confidence={confidence}")
    names, a_idx, b_idx, score = _check(battles, models)
    n = len(names)
    to_elo = scale / math.log(base)
    ab, ba = a_idx * n + b_idx, b_idx * n + a_idx  # flat wins-matrix cells of a>b and b>a

    def wins_of(weights: np.ndarray) -> np.ndarray:
        # Aggregate battles (each counted ``weights`` times) to a wins matrix; a tie is half a
        # win for each side.
        return (np.bincount(ab, weights * score, minlength=n * n)
                + np.bincount(ba, weights * (1.0 - score), minlength=n * n)).reshape(n, n)

    full = wins_of(np.ones(len(score)))
    # L-BFGS from zero, then Newton to polish: the same precision as the bootstrap refits.
    strengths = _fit_many(full[None], ridge, _fit(full, ridge))[0]
    ratings = initial + to_elo * strengths
    ranks = _ranks(ratings)
    counts = np.bincount(np.concatenate([a_idx, b_idx]), minlength=n)
    if bootstrap == 0:
        out = [Rating(m, float(ratings[i]), None, None, int(ranks[i]), None, None,
                      int(counts[i])) for i, m in enumerate(names)]
        return sorted(out, key=lambda r: (r.rank, r.model))
    rng = np.random.default_rng(seed)
    samples = np.empty((bootstrap, n))
    chunk = max(1, 2_000_000 // (n * n))  # bounds the (chunk, n, n) arrays to ~16 MB each
    for first in range(0, bootstrap, chunk):
        size = min(chunk, bootstrap - first)
        # Resampling with replacement = each battle counted a multinomial number of times.
        draws = rng.multinomial(len(score), np.full(len(score), 1.0 / len(score)), size=size)
        wins = np.stack([wins_of(row.astype(float)) for row in draws])
        samples[first:first + size] = initial + to_elo * _fit_many(wins, ridge, strengths)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    sample_ranks = np.array([_ranks(row) for row in samples])
    # Ranks are integers: take the observed ranks at the interval's ends, not interpolations.
    rank_low = np.percentile(sample_ranks, tail, axis=0, method="lower")
    rank_high = np.percentile(sample_ranks, 100.0 - tail, axis=0, method="higher")
    out = [Rating(m, float(ratings[i]), float(low[i]), float(high[i]), int(ranks[i]),
                  int(rank_low[i]), int(rank_high[i]), int(counts[i]))
           for i, m in enumerate(names)]
    return sorted(out, key=lambda r: (r.rank, r.model))
