"""Cost of the window figures for a wide model: 784 features x 1000 rows.

Builds a reference profile from 784-pixel images (scikit-learn's digits upscaled to
28x28 with a little noise, so pixels are discrete-ish like MNIST), fills a SQLite state
with 1000 predictions and their inputs, then times

* ``window_figures`` alone (drift on 784 features, prediction drift, performance), and
* the full scrape path: reading every window from the state plus ``window_figures``
  (what ``/metrics`` does when its cache is cold),

and prints the medians next to the 200 ms target. Run: ``python bench/window_figures.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from monitoring.profile import build_profile
from state.opener import open_state
from state.records import PredictionBatch
from state.windows import StateWindows

TARGET_MS = 200.0


def wide_digits(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    imgs = d.data.reshape(-1, 8, 8)
    big = np.kron(imgs, np.ones((1, 4, 4)))[:, 2:30, 2:30]  # 28 x 28
    big = np.clip(big * 16 + rng.integers(0, 8, size=big.shape), 0, 255)
    return big.reshape(len(big), 784).astype(np.float32), d.target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X, y = wide_digits(rng)
    order = rng.permutation(len(X))
    ref, held, live = order[:1000], order[1000:1400], order[1400:]
    live = np.resize(live, args.rows)
    k = 10
    logits = rng.normal(size=(len(X), k)) + 4 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    profile = build_profile(X[ref], proba[held], X_calibration=X[held], seed=0)
    Xw, Pw = X[live], proba[live].astype(np.float32)
    scores = profile.anomaly.score(Xw)

    with tempfile.TemporaryDirectory() as tmp:
        state = open_state(None, Path(tmp), input_window=args.rows)
        ids = state.new_ids(args.rows)
        for start in range(0, args.rows, 100):  # requests of 100 rows, 1 s apart
            rows = slice(start, start + 100)
            state.record_batches(
                [
                    PredictionBatch(
                        model="m",
                        version="v",
                        t=1000.0 + start / 100,
                        ids=ids[rows],
                        labels=Pw[rows].argmax(axis=1),
                        confidences=Pw[rows].max(axis=1),
                        probabilities=Pw[rows],
                        anomaly_scores=scores[rows],
                        anomalous=scores[rows] > 1e9,
                        inputs=Xw[rows].astype(np.float32),
                    )
                ]
            )
        state.record_feedback([(ids[i], int(y[live[i]])) for i in range(0, args.rows, 2)], 2000.0)

        def from_state() -> None:
            StateWindows.read(state, "m", "v", args.rows, args.rows).figures(profile)

        windows = StateWindows.read(state, "m", "v", args.rows, args.rows)

        def figures_only() -> None:
            windows.figures(profile)

        results = {}
        for name, fn in (
            ("window_figures only", figures_only),
            ("state reads + figures", from_state),
        ):
            fn()  # warm
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
            results[name] = times
        state.close()

    print(f"window figures for 784 features x {args.rows} rows ({args.repeat} runs each)")
    print(f"{'path':<24}{'median ms':>11}{'max ms':>9}{'target ms':>11}{'ratio':>8}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:<24}{med:>11.1f}{max(times):>9.1f}{TARGET_MS:>11.0f}{med / TARGET_MS:>8.2f}")


if __name__ == "__main__":
    main()
