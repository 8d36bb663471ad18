"""`masks: auto`: collect and fit in rounds, and stop when more masks no longer pay.

A round adds `round_masks` training masks (whole shards, collected in parallel). Its fit is
solved from the streamed statistics of every mask so far (coar.solver.SplitStream: the previous
round's saved state plus the new rows; no earlier row is read again) and scored on the held-out
masks at the training alpha: the mean over examples of the per-example correlation, with a
normal interval over examples. The run stops after the first round whose gain over the previous
round is, at the given one-sided confidence, below `min_gain` (the examples' paired differences
give the bound), or when it reaches `max_masks`. Rounds whose fit is not defined yet (OLS with
no more masks than components) are not scored and never stop the run before the budget.

Each round's score (rounds/round-<r>.json, `RoundScore` and how its rows were made) carries the
SHA-256 of its state file and its own digest: the workflow decides from it whether to collect
more, so `read_score` refuses one altered after fit-round wrote it (a `stop` set by hand would
otherwise end the run early without a word).

The statistics take the same rows in the same order, in the same blocks, as a fixed run's fit
of as many masks, so the final attributions equal that run's bit for bit whenever its fit takes
every example in one block (what a round needs anyway). The stopping decision looks at the
held-out masks the evaluation then reports on; it only chooses among fits that never saw them,
and the curve shows every round's score.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from coar.atomic import write_json
from coar.digest import file_digest, record_digest
from coar.evaluate import correlation, predict
from coar.h5format import FormatError, check_expected

if TYPE_CHECKING:  # the solver loads cupy when present: imported where a round is fitted
    from coar.solver import SplitStream


@dataclass(frozen=True)
class StopRule:
    """When a `masks: auto` run stops (config `masks_auto`)."""

    min_gain: float
    confidence: float
    max_masks: int


@dataclass(frozen=True)
class RoundScore:
    """One round's place on the curve and the decision taken after it. Correlations are means
    over the examples whose correlation is defined (`n_examples` of them); None where no fit or
    no previous round exists."""

    round: int  # 0, 1, ...
    masks: int  # training masks fitted so far
    n_examples: int  # examples whose held-out correlation is defined
    mean: float | None  # mean held-out correlation at the training alpha
    low: float | None  # two-sided interval at `confidence`
    high: float | None
    gain: float | None  # mean paired gain over the previous round
    gain_bound: float | None  # its one-sided upper bound at `confidence`
    confidence: float
    stop: bool  # whether the run stopped after this round
    reason: str  # why it stopped or went on

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> RoundScore:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def write_score(path: str | Path, score: RoundScore, made: Mapping, state: str | Path) -> dict:
    """rounds/round-<r>.json: the score, how its rows were made (`made`), the SHA-256 of the
    round's state file and, last, the record's own digest. Returns the record."""
    record = {**score.to_json(), **made, "state_sha256": file_digest(state)}
    record["digest"] = record_digest(record)
    write_json(path, record)
    return record


def read_score(path: str | Path, expected: Mapping) -> RoundScore:
    """A round's score, refused (FormatError naming the file and the fix) when it cannot be
    read, was altered after fit-round wrote it (its digest, or its state file's beside it,
    differs), or records other values than `expected` (the run's sizes and fingerprints, how
    its rows were made, its round number)."""
    path = Path(path)
    fix = f"delete {path} and {path.with_suffix('.h5')} and rerun the workflow (the round is fitted again)"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        digest = record.pop("digest")
        score = RoundScore.from_json(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise FormatError(f"{path} cannot be read as a masks: auto round's score ({error!r}); {fix}") from None
    if digest != record_digest(record):
        raise FormatError(f"{path} was altered after fit-round wrote it (its digest differs); {fix}")
    state = path.with_suffix(".h5")
    if state.exists() and file_digest(state) != record.get("state_sha256"):
        raise FormatError(f"{state} is not the round state {path.name} was scored from (its SHA-256 differs); {fix}")
    check_expected(path, record, expected)
    return score


def new_stream(n_components: int, n_examples: int, method: str, *, backend: str = "auto",
               example_block: int | None = None, max_memory_bytes: int | None = None) -> SplitStream:
    """The empty statistics of a run that grows in rounds, laid out as a fixed run's fit would
    take them (same validation split, same blocks); refused when that fit would not take every
    example in one block, since a round keeps the statistics of all of them."""
    from coar import solver
    from coar.solver.stats import default_block_rows

    plan = solver.plan_fit(n_components, n_examples, method, backend=backend, example_block=example_block,
                           max_memory_bytes=max_memory_bytes)
    if not plan.closed_form or plan.n_blocks > 1:
        raise ValueError(f"masks: auto keeps the statistics of all {n_examples} examples between rounds, but the "
                         f"fit's memory allows only this ({plan}); give the job more memory, or set masks to a "
                         "number (config key 'masks')")
    return solver.SplitStream(None if method == "ols" else solver.VAL_EVERY, backend=backend, gram=True,
                              block_rows=default_block_rows(n_components, plan.example_block))


def score_stream(stream: SplitStream, method: str, heldout_masks: np.ndarray, heldout_outputs: np.ndarray) -> np.ndarray:
    """Per-example held-out correlation of the fit of every row the stream has seen (the stream
    goes on unchanged); all NaN while OLS has no unique solution (no more masks than components)."""
    from coar import solver

    n_components, n_examples = stream.shape
    if method == "ols" and stream.offset <= n_components:
        return np.full(n_examples, np.nan)
    train, val = stream.snapshot()
    fit = solver.fit_stats(train, method, val=val)
    return correlation(heldout_outputs, predict(fit.weight, fit.bias, heldout_masks))


def judge(round: int, masks: int, correlation: np.ndarray, previous: np.ndarray | None, rule: StopRule) -> RoundScore:
    """Score a round from its per-example held-out correlations (NaN where undefined; all NaN
    when the round has no fit) and the previous round's, and decide whether to stop."""
    defined = correlation[np.isfinite(correlation)]
    mean, half = _mean_and_half_width(defined, NormalDist().inv_cdf((1 + rule.confidence) / 2))
    gain = bound = None
    if previous is not None:
        both = np.isfinite(correlation) & np.isfinite(previous)
        gain, width = _mean_and_half_width(correlation[both] - previous[both], NormalDist().inv_cdf(rule.confidence))
        bound = None if gain is None else gain + width
    if masks >= rule.max_masks:
        stop, reason = True, f"reached the budget of {rule.max_masks} masks (masks_auto.max_masks in whole rounds)"
    elif bound is not None and bound < rule.min_gain:
        stop, reason = True, (f"gain {gain:+.4f} over the previous round, at most {bound:+.4f} with "
                              f"{rule.confidence:.0%} confidence: below min_gain {rule.min_gain}")
    elif mean is None:
        stop, reason = False, "no fit to score yet (OLS needs more masks than components)"
    elif bound is None:
        stop, reason = False, "first scored round: nothing to compare with yet"
    else:
        stop, reason = False, (f"gain {gain:+.4f} over the previous round, up to {bound:+.4f} with "
                               f"{rule.confidence:.0%} confidence: min_gain {rule.min_gain} not ruled out")
    return RoundScore(round, masks, int(defined.size), mean, None if mean is None else mean - half,
                      None if mean is None else mean + half, gain, bound, rule.confidence, stop, reason)


def _mean_and_half_width(values: np.ndarray, z: float) -> tuple[float | None, float]:
    """Mean of `values` and z standard errors (0 for fewer than two values); None when empty."""
    if values.size == 0:
        return None, 0.0
    spread = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return float(np.mean(values)), z * spread / math.sqrt(values.size)


def curve_markdown(rounds: Sequence[RoundScore]) -> str:
    """The rounds as a Markdown table: masks, mean held-out correlation with its interval, gain
    with its bound, and the decision after the last."""
    level = f"{rounds[0].confidence:.0%}" if rounds else ""
    lines = [f"| round | masks | mean corr. | {level} interval | gain | gain bound |", "|---|---|---|---|---|---|"]
    for r in rounds:
        interval = "" if r.mean is None else f"{r.low:.3f} to {r.high:.3f}"
        lines.append(f"| {r.round} | {r.masks} | {_num(r.mean, '.3f')} | {interval} | {_num(r.gain, '+.4f')} | "
                     f"{_num(r.gain_bound, '+.4f')} |")
    if rounds:
        last = rounds[-1]
        lines += ["", f"{'Stopped' if last.stop else 'Not stopped'} after round {last.round} "
                      f"({last.masks} masks): {last.reason}."]
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)
