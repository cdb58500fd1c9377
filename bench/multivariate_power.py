"""False alarms and power of the multivariate drift verdict beside the per-feature verdict.

Data: scikit-learn's digits split 60/20/20 as ``tests/monitoring/conftest.py`` does. The
profile is built as training does (``build_profile`` on train, held-out rows = val), so
the anomaly detector is fitted on train and ``profile.reference_scores`` holds the
anomaly scores of val (the rows that set its threshold). Windows of 200, 500 and 1000
rows are drawn from test with replacement (seeded), then shifted in ways that keep every
column's marginal within the window:

* shuffle 8 cols: columns 24..31 (image row 3) each permuted independently across rows;
* shuffle 16 cols, 20% rows: columns 24..39 permuted among a random fifth of the rows;
* spliced halves: features 0..31 of row i with features 32..63 of another row;
* spliced halves, 20% rows: the same for a random fifth of the rows;
* swap r=..: the two columns swapped, for the most correlated pair of non-sparse
  features with close marginals (train KS distance <= 0.05), and for the least
  correlated such pair.

Columns: the multivariate verdict on the full anomaly score (``multi(score)``, what the
live verdict tests: the scores stored at predict time against ``profile.reference_scores``)
and on the reconstruction error alone (``multi(err)``, the alternative: the same test
against the reconstruction errors of val, ``profile.anomaly.reconstruction_error(val)``,
which at scrape time would need a projection of the input window), with their mean effect
(Cliff's delta); the per-feature dataset verdict
(``InputDriftDetector().evaluate(...).drift_detected``) and the share of windows where any
single feature was flagged. The false-alarm table adds a synthetic check of the test's
level (anomaly scores): a low-rank Gaussian source, detector fitted on 2000 rows, a fresh
reference of 2000 rows and fresh windows for each draw, so window and reference are
exchangeable.

Run: ``.venv/bin/python bench/multivariate_power.py [--windows 200]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from monitoring.anomaly import SubspaceAnomalyDetector
from monitoring.drift import InputDriftDetector
from monitoring.multivariate import MultivariateDriftDetector
from monitoring.profile import ReferenceProfile, build_profile

SIZES = (200, 500, 1000)
Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def digits_split() -> dict[str, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, test_size=0.4, stratify=y, random_state=0
    )
    X_val, X_test = train_test_split(X_rest, test_size=0.5, stratify=y_rest, random_state=0)
    return {"train": X_train, "y_train": y_train, "val": X_val, "test": X_test}


def digits_profile(data: dict[str, np.ndarray]) -> ReferenceProfile:
    # A nearest-centroid softmax stands in for the model's held-out probabilities.
    X_train, y_train, X_val = data["train"], data["y_train"], data["val"]
    centroids = np.stack([X_train[y_train == c].mean(axis=0) for c in range(10)])
    logits = -((X_val[:, None, :] - centroids[None]) ** 2).sum(axis=2) / 50.0
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    return build_profile(X_train, prob, X_calibration=X_val, seed=0)


def swap_pairs(X: np.ndarray, max_ks: float = 0.05) -> list[tuple[int, int, float]]:
    """Pairs of non-sparse features (>= 10% non-zero) with train KS distance <= max_ks,
    by decreasing correlation: ``(a, b, r)``."""
    usable = [j for j in range(X.shape[1]) if np.mean(X[:, j] != 0) >= 0.1]
    corr = np.atleast_2d(np.corrcoef(X[:, usable].T.astype(np.float64)))
    pairs = []
    for i, a in enumerate(usable):
        for k in range(i + 1, len(usable)):
            b = usable[k]
            if stats.ks_2samp(X[:, a], X[:, b], method="asymp").statistic <= max_ks:
                pairs.append((a, b, float(corr[i, k])))
    return sorted(pairs, key=lambda p: -p[2])


def shuffle_columns(cols: range, share: float = 1.0) -> Shift:
    def shift(W: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = np.flatnonzero(rng.random(len(W)) < share)
        for j in cols:
            W[rows, j] = W[rng.permutation(rows), j]
        return W

    return shift


def splice_halves(share: float = 1.0) -> Shift:
    def shift(W: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = np.flatnonzero(rng.random(len(W)) < share)
        half = W.shape[1] // 2
        W[rows, half:] = W[rng.permutation(rows), half:]
        return W

    return shift


def swap(a: int, b: int) -> Shift:
    def shift(W: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        W[:, [a, b]] = W[:, [b, a]]
        return W

    return shift


def scenario_rates(
    profile: ReferenceProfile,
    val: np.ndarray,
    pool: np.ndarray,
    shift: Shift | None,
    n: int,
    windows: int,
    seed: int,
    per_feature: bool = True,
) -> dict[str, float]:
    """Detection rates over ``windows`` seeded windows of ``n`` rows drawn from ``pool``."""
    multi = MultivariateDriftDetector()
    features = InputDriftDetector()
    assert profile.reference_scores is not None
    ref_errors = profile.anomaly.reconstruction_error(val)
    rng = np.random.default_rng(seed)
    hits = np.zeros((windows, 6))
    for w in range(windows):
        W = pool[rng.integers(0, len(pool), n)].copy()
        if shift is not None:
            W = shift(W, rng)
        err = multi.evaluate(ref_errors, profile.anomaly.reconstruction_error(W))
        full = multi.evaluate(profile.reference_scores, profile.anomaly.score(W))  # live
        hits[w, :4] = err.detected, err.effect, full.detected, full.effect
        if per_feature:
            report = features.evaluate(
                profile.sample, profile.edges, profile.reference_counts, W, profile.feature_names
            )
            hits[w, 4:] = report.drift_detected, any(f.drifted for f in report.features)
    keys = ("error", "error_effect", "score", "score_effect", "features", "any_feature")
    return dict(zip(keys, hits.mean(axis=0).tolist(), strict=True))


def synthetic_level(n: int, windows: int, seed: int) -> tuple[float, float]:
    """Share of exchangeable windows with p < alpha, and with the verdict, at the defaults."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(3, 10))

    def draw(rows: int) -> np.ndarray:
        return rng.normal(size=(rows, 3)) @ mixing + 0.3 * rng.normal(size=(rows, 10))

    anomaly = SubspaceAnomalyDetector().fit(draw(2000), draw(500))
    det = MultivariateDriftDetector()
    out = np.zeros((windows, 2))
    for w in range(windows):
        report = det.evaluate(anomaly.score(draw(2000)), anomaly.score(draw(n)))
        out[w] = report.p_value < det.alpha, report.detected
    rates = out.mean(axis=0)
    return float(rates[0]), float(rates[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200, help="seeded windows per cell")
    args = parser.parse_args()
    data = digits_split()
    profile = digits_profile(data)
    val, test = data["val"], data["test"]
    assert profile.reference_scores is not None
    pairs = swap_pairs(data["train"])
    (a1, b1, r1), (a2, b2, r2) = pairs[0], pairs[-1]
    scenarios: list[tuple[str, Shift]] = [
        ("shuffle 8 cols", shuffle_columns(range(24, 32))),
        ("shuffle 16 cols, 20% rows", shuffle_columns(range(24, 40), 0.2)),
        ("spliced halves", splice_halves()),
        ("spliced halves, 20% rows", splice_halves(0.2)),
        (f"swap {a1}<->{b1} (r={r1:.2f})", swap(a1, b1)),
        (f"swap {a2}<->{b2} (r={r2:.2f})", swap(a2, b2)),
    ]
    print(f"digits: train {len(data['train'])}, reference (val) {len(val)}, test pool {len(test)}")
    print(f"{args.windows} seeded windows per cell, drawn from test with replacement")
    print("defaults: MultivariateDriftDetector(alpha=0.05, min_effect=0.1), InputDriftDetector()")
    print(
        "multi(score): the live verdict (stored anomaly scores vs profile.reference_scores);"
        " multi(err): reconstruction errors vs val's, for comparison"
    )
    head = (
        f"{'scenario':30s} {'rows':>5s} {'multi(err)':>10s} {'multi(score)':>12s}"
        f" {'per-feature':>11s} {'any feature':>11s} {'effect err':>10s} {'effect score':>12s}"
    )
    print("\nfalse alarms, clean windows")
    print(head)
    for n in SIZES:
        r = scenario_rates(profile, val, test, None, n, args.windows, seed=n)
        print(
            f"{'clean digits (test)':30s} {n:5d} {r['error']:10.3f} {r['score']:12.3f}"
            f" {r['features']:11.3f} {r['any_feature']:11.3f} {r['error_effect']:+10.3f}"
            f" {r['score_effect']:+12.3f}"
        )
    print("\nlevel on exchangeable synthetic windows (fresh reference each draw)")
    print(f"{'rows':>5s} {'p < alpha':>10s} {'verdict':>8s}")
    for n in SIZES:
        p_rate, verdict = synthetic_level(n, args.windows, seed=n)
        print(f"{n:5d} {p_rate:10.3f} {verdict:8.3f}")
    print("\npower, shifts that keep every marginal")
    print(head)
    for k, (name, shift) in enumerate(scenarios):
        for n in SIZES:
            r = scenario_rates(profile, val, test, shift, n, args.windows, seed=1000 * k + n)
            print(
                f"{name:30s} {n:5d} {r['error']:10.3f} {r['score']:12.3f}"
                f" {r['features']:11.3f} {r['any_feature']:11.3f} {r['error_effect']:+10.3f}"
                f" {r['score_effect']:+12.3f}"
            )
    rng = np.random.default_rng(0)
    ref, win = rng.chisquare(5, 2000), rng.chisquare(5, 1000)
    det = MultivariateDriftDetector()
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        det.evaluate(ref, win)
        times.append(time.perf_counter() - t0)
    print(
        f"\nevaluate, 1000 window vs 2000 reference scores: median {np.median(times) * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
