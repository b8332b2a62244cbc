"""Verdicts as statistics: a difference between two nets' mean errors, its 95% interval over seeds,
and what it decides.

Method: Welch's t interval for the difference of two means with unequal variances (the seeds of
each net are independent samples; their spreads differ, e.g. plain-56's against plain-20's), with
the Welch-Satterthwaite degrees of freedom. It needs each net's mean, sample standard deviation
and seed count only, so a published table (mean ± std, n) can be re-decided without its runs.

From the command line, on two nets' published mean, std and seed count:

  python -m experiments.stats 5.01,2.07,3 3.87,2.14,3 --op '<=' --margin 1.78

A claim `a OP b` on an error (lower is better) is decided on d = mean(a) - mean(b):

  a < b   (a is better)             shown if the interval lies below 0, contradicted if above 0
  a > b   (a is worse)              shown if above 0, contradicted if below 0
  a <= b  (a is no worse, margin M) shown if it lies below +M (non-inferiority), contradicted if
                                    above +M
  a >= b  (a is no better, margin M) shown if above -M, contradicted if below -M

and undecided otherwise. An undecided verdict says how many seeds per net would decide it if the
means and spreads stayed as observed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

LEVEL = 0.95
METHOD = "Welch's t interval over seeds, 95%"
SHOWN, UNDECIDED, CONTRADICTED = "shown", "undecided", "contradicted"
# Beyond this many seeds per net a claim counts as not decidable by more seeds at the observed gap.
MAX_SEEDS = 1000


@dataclasses.dataclass(frozen=True)
class Sample:
    """A net's final errors over seeds, as mean, sample std (n - 1) and count."""

    mean: float
    std: float | None  # None with one seed
    n: int


@dataclasses.dataclass(frozen=True)
class Interval:
    diff: float  # mean(a) - mean(b), percentage points
    lo: float | None  # None when a side has one seed: no spread, no interval
    hi: float | None
    df: float | None


def t_quantile(p: float, df: float) -> float:
    from scipy import stats  # a dependency of jax; only reports need it

    return float(stats.t.ppf(p, df))


def welch_df(a: Sample, b: Sample, n_a: int | None = None, n_b: int | None = None) -> float:
    """Welch-Satterthwaite degrees of freedom (for seed counts n_a, n_b; default the samples')."""
    n_a, n_b = n_a or a.n, n_b or b.n
    va, vb = a.std**2 / n_a, b.std**2 / n_b
    if va + vb == 0:
        return float(n_a + n_b - 2)
    return (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))


def half_width(a: Sample, b: Sample, n_a: int | None = None, n_b: int | None = None) -> float:
    n_a, n_b = n_a or a.n, n_b or b.n
    se = math.sqrt(a.std**2 / n_a + b.std**2 / n_b)
    if se == 0:
        return 0.0
    return t_quantile(0.5 + LEVEL / 2, welch_df(a, b, n_a, n_b)) * se


def interval(a: Sample, b: Sample) -> Interval:
    diff = a.mean - b.mean
    if a.std is None or b.std is None or a.n < 2 or b.n < 2:
        return Interval(diff, None, None, None)
    h = half_width(a, b)
    return Interval(diff, diff - h, diff + h, welch_df(a, b))


def boundary(op: str, margin: float) -> float:
    """The value of d that separates the claim from its opposite."""
    return {"<": 0.0, ">": 0.0, "<=": margin, ">=": -margin}[op]


def verdict(op: str, ci: Interval, margin: float = 0.0) -> str:
    if ci.lo is None:
        return UNDECIDED
    edge = boundary(op, margin)
    below, above = ci.hi < edge, ci.lo > edge
    if op in ("<", "<="):
        return SHOWN if below else CONTRADICTED if above else UNDECIDED
    return SHOWN if above else CONTRADICTED if below else UNDECIDED


def seeds_to_decide(a: Sample, b: Sample, op: str = "<", margin: float = 0.0) -> int | None:
    """Seeds per net (the same for both) at which the interval would exclude the claim's boundary,
    if the means and standard deviations stayed as observed; None when no count up to MAX_SEEDS
    would (the observed difference sits on the boundary) or a side has no spread yet."""
    if a.std is None or b.std is None:
        return None
    gap = abs(a.mean - b.mean - boundary(op, margin))
    if gap == 0:
        return None
    n = 2
    while n <= MAX_SEEDS:
        if half_width(a, b, n, n) < gap:
            return n
        n += 1 if n < 50 else n // 10
    return None


def describe(ci: Interval) -> str:
    """`+1.14 points [−3.63, +5.91]`."""
    if ci.lo is None:
        return f"{ci.diff:+.2f} points (one seed on a side: no interval)"
    return f"{ci.diff:+.2f} points [{ci.lo:+.2f}, {ci.hi:+.2f}]"


def decision_text(a: Sample, b: Sample, op: str, margin: float = 0.0) -> str:
    """One line: the difference, its interval, the verdict, and what would decide it."""
    ci = interval(a, b)
    word = verdict(op, ci, margin)
    text = f"a {op} b: difference {describe(ci)}: {word}"
    if word == UNDECIDED:
        n = seeds_to_decide(a, b, op, margin)
        text += (
            f"; about {n} seeds per net would decide it at this spread"
            if n
            else "; more seeds alone would not decide it"
        )
    return text


def _sample(text: str) -> Sample:
    try:
        mean, std, n = text.split(",")
        return Sample(float(mean), float(std), int(n))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write MEAN,STD,N (e.g. 5.01,2.07,3)") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.stats",
        description="Decide a claim a OP b on two nets' errors from their mean, std and seeds.",
    )
    p.add_argument("a", type=_sample, help="MEAN,STD,N of net a (error %%)")
    p.add_argument("b", type=_sample, help="MEAN,STD,N of net b")
    p.add_argument("--op", choices=("<", ">", "<=", ">="), default="<")
    p.add_argument("--margin", type=float, default=None, help="points, for <= and >=")
    a = p.parse_args(argv)
    if a.op in ("<=", ">=") and not a.margin:
        p.error(f"a '{a.op}' claim needs --margin (percentage points)")
    print(decision_text(a.a, a.b, a.op, a.margin or 0.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
