"""Rankings: Bradley–Terry recovers known strengths with covering intervals, Elo's arithmetic and
order dependence, ties as half wins, and every bad input."""

from __future__ import annotations

import math
import random

import pytest

from fmstack.errors import ConfigError
from fmstack.eval.rankings import Battle, bradley_terry, elo

# Known log-strengths (natural log odds), centred; the simulated world the fits must recover.
STRENGTHS = {"m0": -1.0, "m1": -0.45, "m2": 0.05, "m3": 0.5, "m4": 0.9}
MEAN = sum(STRENGTHS.values()) / len(STRENGTHS)
TO_ELO = 400 / math.log(10)


def true_rating(model: str) -> float:
    return 1000 + TO_ELO * (STRENGTHS[model] - MEAN)


def simulate(n: int, seed: int) -> list[Battle]:
    rng = random.Random(seed)
    names = list(STRENGTHS)
    out = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        p_a = 1 / (1 + math.exp(STRENGTHS[b] - STRENGTHS[a]))
        out.append(Battle(a, b, "a" if rng.random() < p_a else "b"))
    return out


@pytest.fixture(scope="module")
def battles() -> list[Battle]:
    # One seeded world. Five 95% intervals all cover the truth in about 3 worlds of 4, so
    # this seed is one where they do; test_intervals_are_calibrated checks that this is not
    # luck, by the coverage rate over many worlds.
    return simulate(3000, seed=1)


def test_bradley_terry_recovers_order_and_intervals_cover_truth(battles: list[Battle]) -> None:
    ratings = bradley_terry(battles, seed=1)  # the default 1000 resamples
    by_strength = sorted(STRENGTHS, key=STRENGTHS.__getitem__, reverse=True)
    assert [r.model for r in ratings] == by_strength
    assert [r.rank for r in ratings] == [1, 2, 3, 4, 5]
    # Centred like the truth: the ridge prior pins the mean log-strength to 0.
    assert sum(r.rating for r in ratings) / 5 == pytest.approx(1000, abs=1e-6)
    for r in ratings:
        assert r.ci_low is not None and r.ci_high is not None
        assert r.ci_low < r.rating < r.ci_high
        assert r.ci_low <= true_rating(r.model) <= r.ci_high, r
        # 3000 battles pin each rating to within a few tens of points, not hundreds.
        assert r.ci_high - r.ci_low < 80
        assert r.battles == sum(r.model in (b.a, b.b) for b in battles)
    # Neighbours here are 70+ points apart, so every bootstrap keeps the same ranks.
    assert all(r.rank_low == r.rank == r.rank_high for r in ratings)


def test_intervals_are_calibrated() -> None:
    covered = total = 0
    for seed in range(60):
        for r in bradley_terry(simulate(500, seed=100 + seed), bootstrap=400, seed=seed):
            assert r.ci_low is not None and r.ci_high is not None
            covered += r.ci_low <= true_rating(r.model) <= r.ci_high
            total += 1
    # Nominal 95% over 300 intervals (this draw: 284/300). Intervals too narrow or off-centre
    # would fall well below 90%; intervals too wide would cover nearly everything.
    assert 0.90 <= covered / total <= 0.99, f"{covered}/{total} intervals cover the truth"


def test_bootstrap_is_seeded(battles: list[Battle]) -> None:
    one = bradley_terry(battles[:400], bootstrap=50, seed=3)
    assert bradley_terry(battles[:400], bootstrap=50, seed=3) == one
    other = bradley_terry(battles[:400], bootstrap=50, seed=4)
    assert [r.rating for r in other] == [r.rating for r in one]  # the point fit has no noise
    assert [r.ci_low for r in other] != [r.ci_low for r in one]


def test_close_models_get_overlapping_rank_intervals() -> None:
    rng = random.Random(5)
    # Two equal models and a clearly weaker one: the equal pair must not be told apart.
    battles = [Battle("x", "y", rng.choice(["a", "b"])) for _ in range(200)]
    battles += [Battle(rng.choice("xy"), "z", "a" if rng.random() < 0.9 else "b")
                for _ in range(200)]
    ratings = {r.model: r for r in bradley_terry(battles, bootstrap=200)}
    assert ratings["z"].rank == 3 and ratings["z"].rank_low == ratings["z"].rank_high == 3
    assert ratings["x"].rank_low == ratings["y"].rank_low == 1
    assert ratings["x"].rank_high == ratings["y"].rank_high == 2


def test_elo_orders_known_strengths(battles: list[Battle]) -> None:
    ratings = elo(battles, k=8)
    assert [r.model for r in ratings] == sorted(STRENGTHS, key=STRENGTHS.__getitem__,
                                                reverse=True)
    assert all(r.ci_low is None and r.rank_low is None for r in ratings)
    # Elo is zero-sum: every update moves both sides by the same amount.
    assert sum(r.rating for r in ratings) == pytest.approx(5 * 1000)


def test_elo_arithmetic_and_options() -> None:
    (first, second) = elo([("p", "q", "a")], k=32, initial=1500)
    assert (first.model, first.rating, second.rating) == ("p", 1516.0, 1484.0)
    # The second battle starts from 1516 vs 1484: expected score for q is 1/(1+10^(32/400)).
    expected_q = 1 / (1 + 10 ** (32 / 400))
    ratings = {r.model: r.rating for r in elo([("p", "q", "a"), ("p", "q", "b")], k=32,
                                              initial=1500)}
    assert ratings["q"] == pytest.approx(1484 + 32 * (1 - expected_q))
    tie = {r.model: r.rating for r in elo([("p", "q", "tie")], k=10)}
    assert tie == {"p": 1000.0, "q": 1000.0}


def test_elo_depends_on_order_bradley_terry_does_not(battles: list[Battle]) -> None:
    some = battles[:300]
    forward = {r.model: r.rating for r in elo(some, k=16)}
    backward = {r.model: r.rating for r in elo(list(reversed(some)), k=16)}
    assert any(abs(forward[m] - backward[m]) > 1 for m in forward)
    bt_forward = {r.model: r.rating for r in bradley_terry(some, bootstrap=0)}
    bt_backward = {r.model: r.rating for r in bradley_terry(list(reversed(some)), bootstrap=0)}
    assert bt_forward == pytest.approx(bt_backward, abs=1e-6)


def test_ties_count_as_half_wins() -> None:
    # One win and two ties for a is the same evidence as two wins for a and one for b.
    with_ties = [("a", "b", "a"), ("a", "b", "tie"), ("b", "a", "tie")]
    explicit = [("a", "b", "a"), ("a", "b", "a"), ("a", "b", "b")]
    got = {r.model: r.rating for r in bradley_terry(with_ties, bootstrap=0)}
    want = {r.model: r.rating for r in bradley_terry(explicit, bootstrap=0)}
    assert got == pytest.approx(want, abs=1e-6)
    assert got["a"] > got["b"]
    only_ties = bradley_terry([("a", "b", "tie")] * 10, bootstrap=20)
    assert [r.rating for r in only_ties] == pytest.approx([1000.0, 1000.0], abs=1e-6)
    assert [r.rank for r in only_ties] == [1, 1]  # equal ratings share the better rank


def test_plain_maximum_likelihood_without_ridge(battles: list[Battle]) -> None:
    plain = {r.model: r for r in bradley_terry(battles, ridge=0, bootstrap=100)}
    ridged = {r.model: r for r in bradley_terry(battles, bootstrap=100)}
    for m, r in plain.items():
        # 3000 battles outweigh a N(0, 100) prior: the fits agree to well under a point.
        assert r.rating == pytest.approx(ridged[m].rating, abs=0.5)
        assert r.ci_low is not None and r.ci_high is not None
        assert r.ci_low < r.rating < r.ci_high and math.isfinite(r.ci_high)


def test_undefeated_model_gets_a_finite_rating_thanks_to_the_ridge() -> None:
    battles = [("champ", "b", "a")] * 20 + [("b", "c", "a"), ("c", "b", "a")] * 5
    ratings = {r.model: r for r in bradley_terry(battles, bootstrap=50)}
    assert ratings["champ"].rank == 1
    assert math.isfinite(ratings["champ"].rating) and ratings["champ"].ci_high is not None
    assert math.isfinite(ratings["champ"].ci_high)
    stronger_prior = {r.model: r.rating for r in bradley_terry(battles, bootstrap=0, ridge=1)}
    assert stronger_prior["champ"] < ratings["champ"].rating  # the prior shrinks toward 1000


def test_models_argument_orders_and_requires_battles() -> None:
    battles = [("a", "b", "a"), ("b", "c", "tie")]
    ratings = bradley_terry(battles, bootstrap=0, models=["c", "b", "a"])
    assert {r.model for r in ratings} == {"a", "b", "c"}
    for rate in (elo, bradley_terry):
        with pytest.raises(ConfigError, match=r"model 'idle' has no battles"):
            rate(battles, models=["a", "idle"])


@pytest.mark.parametrize(
    ("battles", "message"),
    [
        ([], "no battles"),
        ([("a", "a", "a")], "battle 1: model 'a' against itself"),
        ([("a", "b", "a"), ("a", "b", "draw")], "battle 2: winner must be 'a', 'b' or 'tie'"),
        ([("a", "b")], r"battle 1: expected \(model_a, model_b, winner\)"),
        ([("a", "", "a")], "battle 1: model names must be non-empty strings"),
    ],
)
def test_bad_battles(battles: list[tuple[str, ...]], message: str) -> None:
    for rate in (elo, bradley_terry):
        with pytest.raises(ConfigError, match=message):
            rate(battles)


def test_bad_options() -> None:
    ok = [("a", "b", "a")]
    with pytest.raises(ConfigError, match="k > 0"):
        elo(ok, k=0)
    with pytest.raises(ConfigError, match="ridge >= 0"):
        bradley_terry(ok, ridge=-1)
    with pytest.raises(ConfigError, match="0 < confidence < 1"):
        bradley_terry(ok, confidence=1.5)
