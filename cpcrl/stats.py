"""Statistics for comparing RL runs over a suite of tasks (Agarwal et al., NeurIPS 2021, "Deep RL at the
Edge of the Statistical Precipice"): normalised scores, mean / median / IQM / optimality gap, the stratified
bootstrap, the probability of improvement and performance profiles. Pure numpy/scipy functions.

Scores come per task: `tasks` is a sequence of 1-D arrays, `tasks[t][i]` = normalised final score of run i
on task t. Tasks may hold different numbers of runs (a killed run is simply missing). Every aggregate below
also accepts arrays with leading batch axes `[..., n_t]` and reduces the last one, so the same function
gives the point estimate (one array per task) and every bootstrap replicate at once (`[reps, n_t]`).
With the same number of runs on every task these are exactly rliable's `aggregate_*` functions on the
runs x tasks matrix (benchmarks/bench_report.py checks it to 1e-9).

    normalised score   s = (score - random) / (reference - random)                  (per task)
    mean               (1/T) sum_t mean_i s_ti                                     (tasks weighted equally)
    median             median_t ( mean_i s_ti )                                    (median of task means)
    IQM                mean of the runs between the 25th and 75th percentile of all s_ti pooled
                       = scipy.stats.trim_mean(pooled, 0.25): 25% cut from each end
    optimality gap     gamma - mean_ti min(s_ti, gamma)      (gamma = 1: how far below the reference)
    P(X > Y)           (1/T) sum_t P(X_t > Y_t),  P(X_t > Y_t) = (1/(n m)) sum_i sum_j [x_i > y_j] + [x_i = y_j]/2
                       (the Mann-Whitney U statistic over n*m, from ranks of the pooled runs of task t)
    profile            F(tau) = (1/T) sum_t (1/n_t) sum_i [s_ti > tau]             (fraction of runs above tau)

Stratified bootstrap: a replicate draws, independently for each task t, n_t runs with replacement from that
task's runs (a task never lends runs to another, and keeps its count); the interval is the percentile
interval, the (1 - c)/2 and (1 + c)/2 quantiles of the statistic over the replicates (c = 0.95).
Why not scipy.stats.bootstrap: it does resample each sample independently (a stratified bootstrap), but it
refuses a sample with one observation (a task with one finished run), so the resampling (a few lines) is
here and scipy gives the trimmed mean and the ranks. rliable is archived and pulls seaborn/pandas/arch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95  # every interval in cpcrl-report
REPS = 2000  # bootstrap replicates unless cpcrl-report --reps says otherwise
IQM_CUT = 0.25  # fraction trimmed from each end for the interquartile mean

Tasks = Sequence[np.ndarray]


def normalise(score, random: float, reference: float):
    """(score - random) / (reference - random): 0 = the random policy, 1 = the reference score."""
    if reference == random:
        raise ValueError(f"reference score {reference} equals the random score: nothing to normalise by")
    return (np.asarray(score, dtype=float) - random) / (reference - random)


def _task_means(tasks: Tasks) -> np.ndarray:
    return np.stack([np.asarray(x, dtype=float).mean(-1) for x in tasks], -1)


def _pooled(tasks: Tasks) -> np.ndarray:
    return np.concatenate([np.asarray(x, dtype=float) for x in tasks], -1)


def mean_score(tasks: Tasks):
    """Mean over tasks of each task's mean score (every task weighs the same)."""
    return _task_means(tasks).mean(-1)


def median_score(tasks: Tasks):
    """Median over tasks of each task's mean score (rliable's aggregate_median)."""
    return np.median(_task_means(tasks), -1)


def iqm(tasks: Tasks):
    """Interquartile mean of all runs pooled: the mean of the middle 50% (25% trimmed from each end)."""
    return sps.trim_mean(_pooled(tasks), IQM_CUT, axis=-1)


def optimality_gap(tasks: Tasks, gamma: float = 1.0):
    """gamma - mean of min(score, gamma) over all runs: the shortfall from gamma, scores above it count as gamma."""
    return gamma - np.minimum(_pooled(tasks), gamma).mean(-1)


AGGREGATES: dict[str, Callable[[Tasks], np.ndarray]] = {
    "mean": mean_score, "median": median_score, "iqm": iqm, "optimality_gap": optimality_gap}


def probability_of_improvement(x_tasks: Tasks, y_tasks: Tasks):
    """P(X > Y): mean over tasks of the chance that a random run of X beats a random run of Y (ties count 1/2)."""
    if len(x_tasks) != len(y_tasks):
        raise ValueError(f"X has {len(x_tasks)} tasks and Y {len(y_tasks)}: compare on the same tasks")
    per_task = []
    for x, y in zip(x_tasks, y_tasks):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        n, m = x.shape[-1], y.shape[-1]
        ranks = sps.rankdata(np.concatenate([x, y], -1), axis=-1)  # ties get their average rank
        u = ranks[..., :n].sum(-1) - n * (n + 1) / 2  # Mann-Whitney U of x: pairs won + half the ties
        per_task.append(u / (n * m))
    return np.mean(per_task, 0)


def performance_profile(tasks: Tasks, taus: np.ndarray):
    """F(tau) for each tau: the fraction of runs scoring above tau (averaged over tasks). -> [..., len(taus)]"""
    taus = np.asarray(taus, dtype=float)
    return np.mean([(np.asarray(x, dtype=float)[..., None, :] > taus[:, None]).mean(-1) for x in tasks], 0)


def stratified_resample(tasks: Tasks, reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`reps` stratified bootstrap replicates: per task, [reps, n_t] of its own runs drawn with replacement."""
    out = []
    for x in tasks:
        x = np.asarray(x, dtype=float)
        out.append(x[rng.integers(0, len(x), size=(reps, len(x)))])
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The (1 - c)/2 and (1 + c)/2 quantiles over the first axis (the replicates)."""
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    return low, high


def bootstrap_interval(statistic: Callable, samples: Sequence[Tasks], reps: int = REPS,
                       confidence: float = CONFIDENCE, seed: int = 0, chunk: int = 500):
    """-> (point, low, high) of statistic(*samples) with a stratified-bootstrap percentile interval.

    `samples` is one Tasks per argument of `statistic` (one for an aggregate, two for P(X > Y)); every
    task of every argument is resampled on its own. Replicates are drawn `chunk` at a time to bound memory.
    """
    rng = np.random.default_rng(seed)
    point = np.asarray(statistic(*samples))
    replicates = []
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        replicates.append(np.asarray(statistic(*(stratified_resample(s, n, rng) for s in samples))))
    low, high = percentile_interval(np.concatenate(replicates, 0), confidence)
    return point, low, high


def aggregate_intervals(tasks: Tasks, reps: int = REPS, confidence: float = CONFIDENCE,
                        seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Every aggregate of AGGREGATES with its interval, all from the same replicates."""
    names = list(AGGREGATES)
    point, low, high = bootstrap_interval(lambda t: np.stack([AGGREGATES[k](t) for k in names], -1), [tasks],
                                          reps, confidence, seed)
    return {k: (float(point[i]), float(low[i]), float(high[i])) for i, k in enumerate(names)}


def mean_interval(values, reps: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of one task's runs and its bootstrap percentile interval (a single run: that value, no spread)."""
    point, low, high = bootstrap_interval(mean_score, [[np.asarray(values, dtype=float)]], reps, seed=seed)
    return float(point), float(low), float(high)
