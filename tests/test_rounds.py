"""masks: auto: the stopping rule, statistics that resume across rounds bit for bit, and a run
that grows in rounds and ends with the fixed run's attributions."""

import json
import os

import h5py
import numpy as np
import pytest

import coar
from coar import h5format
from coar.config import ConfigError, check_config
from coar.h5format import FormatError
from coar.masks import mask_budget, shard_rows
from coar.rounds import RoundScore, StopRule, curve_markdown, judge, read_score, write_score
from coar.solver import SplitStream, fit, fit_stats, split_stats
from tests.snakemake_runs import TINY, snakemake
from tests.test_config import config
from tests.test_trust import N_COMPONENTS, N_EXAMPLES, flip_a_byte, shard_meta

RULE = StopRule(min_gain=0.005, confidence=0.95, max_masks=10_000)


def correlations(mean: float, n: int = 400, spread: float = 0.05, seed: int = 0) -> np.ndarray:
    return mean + spread * np.random.default_rng(seed).standard_normal(n)


def test_a_round_stops_when_its_gain_is_surely_below_min_gain():
    before = correlations(0.90)
    score = judge(3, 4000, before + 0.001, before, RULE)
    assert score.stop and "below min_gain 0.005" in score.reason
    assert score.gain == pytest.approx(0.001) and score.gain < score.gain_bound < RULE.min_gain


def test_a_round_goes_on_while_a_gain_of_min_gain_is_not_ruled_out():
    before = correlations(0.90)
    noisy = before + 0.003 + 0.1 * (-1) ** np.arange(400)  # a mean gain of 0.003 with a standard error of 0.005
    score = judge(3, 4000, noisy, before, RULE)
    assert score.gain == pytest.approx(0.003) and score.gain_bound > RULE.min_gain and not score.stop
    assert not judge(3, 4000, before + 0.02, before, RULE).stop


def test_the_budget_stops_a_run_whatever_its_gain():
    before = correlations(0.5)
    score = judge(9, 10_000, before + 0.2, before, RULE)
    assert score.stop and "budget of 10000 masks" in score.reason


def test_unscored_and_first_rounds_never_stop_before_the_budget():
    unfit = np.full(400, np.nan)  # OLS with no more masks than components: no fit to score
    assert not judge(0, 300, unfit, None, RULE).stop
    first = judge(1, 600, correlations(0.9), unfit, RULE)
    assert not first.stop and first.gain is None and "first scored round" in first.reason
    assert judge(0, 10_000, unfit, None, RULE).stop


def test_gains_pair_the_examples_defined_in_both_rounds_and_the_interval_covers_the_mean():
    before, after = correlations(0.8), correlations(0.8) + 0.1
    before[:10] = np.nan
    score = judge(2, 3000, after, before, RULE)
    assert score.gain == pytest.approx(0.1) and score.n_examples == 400
    assert score.low < score.mean < score.high
    assert RoundScore.from_json(json.loads(json.dumps(score.to_json()))) == score


def test_the_curve_table_shows_every_round_and_why_it_stopped():
    rounds = [judge(0, 1000, correlations(0.8), None, RULE)]
    rounds.append(judge(1, 2000, correlations(0.8) + 0.001, correlations(0.8), RULE))
    table = curve_markdown(rounds)
    assert f"| 0 | 1000 | {rounds[0].mean:.3f} | {rounds[0].low:.3f} to {rounds[0].high:.3f} |  |  |" in table
    assert "| 1 | 2000 |" in table
    assert "Stopped after round 1 (2000 masks): gain +0.0010" in table


def random_rows(m: int = 900, N: int = 40, n: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((m, N)) < 0.1
    return X, (X @ rng.normal(size=(N, n)) + rng.normal(size=(m, n))).astype(np.float32)


@pytest.mark.parametrize("method, val_every", [("ols", None), ("ridge", 10)])
def test_statistics_saved_and_resumed_between_rounds_equal_one_pass_bit_for_bit(method, val_every):
    X, Y = random_rows()
    one_pass = fit((X, Y), method, backend="numpy", block_rows=64)
    stream = SplitStream(val_every, backend="numpy", block_rows=64)
    for start in range(0, len(X), 250):  # rounds that end inside a block of 64 rows
        for part in range(start, min(start + 250, len(X)), 70):  # chunks of any size
            stream.push(X[part : min(part + 70, start + 250)], Y[part : min(part + 70, start + 250)])
        stream.snapshot()  # scoring a round leaves the stream as it was
        stream = SplitStream.from_state(stream.state(), backend="numpy")
    train, val = stream.finish()
    resumed = fit_stats(train, method, val=val)
    assert np.array_equal(resumed.weight, one_pass.weight) and np.array_equal(resumed.bias, one_pass.bias)


def test_a_snapshot_is_what_the_stream_would_finish_with_now():
    X, Y = random_rows()
    stream = SplitStream(None, backend="numpy", block_rows=64)
    stream.push(X[:500], Y[:500])
    snapshot, _ = stream.snapshot()
    whole, _ = split_stats([(X[:500], Y[:500])], None, backend="numpy", block_rows=64)
    assert np.array_equal(snapshot.sxx, whole.sxx) and np.array_equal(snapshot.sxy, whole.sxy)
    assert stream.offset == 500


def test_auto_budgets_whole_rounds_of_whole_shards_and_refuses_other_layouts():
    auto = config(masks="auto", shard_masks=1000, masks_auto={"round_masks": 2000, "min_gain": 0.005,
                                                              "confidence": 0.95, "max_masks": 5000})
    assert mask_budget(auto) == 6000 and len(shard_rows(auto)) == 6
    check_config(auto)
    with pytest.raises(ConfigError, match="'masks_auto.round_masks': 1500 masks per round is not a whole number"):
        check_config({**auto, "masks_auto": {**auto["masks_auto"], "round_masks": 1500}})
    with pytest.raises(ConfigError, match="'shards': masks: auto collects in rounds"):
        check_config({**auto, "shards": 4})


@pytest.mark.slow
def test_an_auto_run_grows_in_rounds_and_ends_with_the_fixed_runs_attributions_bit_for_bit(tmp_path):
    """The tiny CI run in rounds of 100 masks, its gain threshold out of reach, stops at its
    400-mask budget; the fixed run of those 400 masks (the same shards, fitted from the merged
    dataset) then gives the same numbers."""
    auto = {**TINY, "masks": "auto", "shards": None, "shard_masks": 100,
            "masks_auto": {"max_masks": 400, "min_gain": 1e-9}, "evaluation": {**TINY["evaluation"], "baselines": []}}
    run = tmp_path / "results" / TINY["run"]
    result = snakemake(tmp_path, f"results/{TINY['run']}/summary.md", config=auto)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = [json.loads((run / "rounds" / f"round-{r}.json").read_text()) for r in range(4)]
    assert [r["masks"] for r in rounds] == [100, 200, 300, 400] and not (run / "rounds" / "round-4.json").exists()
    assert [r["stop"] for r in rounds] == [False, False, False, True] and "budget" in rounds[-1]["reason"]
    assert rounds[1]["mean"] < rounds[3]["mean"]  # more masks, better held-out predictions
    summary = (run / "summary.md").read_text()
    assert "## Masks chosen by `masks: auto`" in summary and "| 3 | 400 |" in summary
    assert (run / "plots" / "masks_curve.png").stat().st_size > 0
    opened = coar.open(run)
    assert [r.masks for r in opened.rounds] == [100, 200, 300, 400] and opened.rounds[-1].stop
    assert opened.info["mean_heldout_correlation"] == json.loads((run / "evaluation.json").read_text())["mean_correlation"]

    # a decision edited by hand (its time kept) ends nothing: the next invocation refuses the file
    score = run / "rounds" / "round-1.json"
    edited, stat = json.loads(score.read_text()), score.stat()
    score.write_text(json.dumps({**edited, "stop": True}))
    os.utime(score, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = snakemake(tmp_path, f"results/{TINY['run']}/summary.md", config=auto)
    assert result.returncode != 0 and "round-1.json was altered after fit-round wrote it" in result.stderr
    score.write_text(json.dumps(edited))

    grown = run / "attributions-auto.h5"
    (run / "attributions.h5").rename(grown)
    fixed = {**auto, "masks": 400}
    result = snakemake(tmp_path, f"results/{TINY['run']}/attributions.h5", config=fixed)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Rule: collect" not in result.stderr  # the rounds' shards are the fixed run's
    with h5py.File(grown) as a, h5py.File(run / "attributions.h5") as b:
        assert a.attrs["n_masks"] == b.attrs["n_masks"] == 400
        assert np.array_equal(a["weight"][()], b["weight"][()]) and np.array_equal(a["bias"][()], b["bias"][()])


def write_round(path, rows: int = 50, **overrides) -> SplitStream:
    """A round file of `rows` random rows (held rows too: blocks of 16), as fit-round writes it."""
    X, Y = random_rows(rows, N_COMPONENTS, N_EXAMPLES)
    stream = SplitStream(None, backend="numpy", block_rows=16)
    stream.push(X, Y)
    meta = {k: v for k, v in shard_meta().items() if k not in ("shard", "row_start")}
    h5format.write_round_state(path, stream.state(), np.linspace(0, 1, N_EXAMPLES),
                               {**meta, "row_stop": rows, "round": 0, "method": "ols", **overrides})
    return stream


def test_a_round_score_is_read_back_as_written_and_refused_when_altered_or_of_another_run(tmp_path):
    write_round(tmp_path / "round-0.h5")
    score = judge(0, 50, np.linspace(0.5, 0.9, N_EXAMPLES), None, StopRule(0.01, 0.95, 100))
    record = write_score(tmp_path / "round-0.json", score, {"seed": 0, "n_examples": N_EXAMPLES}, tmp_path / "round-0.h5")
    assert read_score(tmp_path / "round-0.json", {"round": 0, "seed": 0}) == score
    with pytest.raises(FormatError, match="round-0.json was made with seed 0 but this run has 1"):
        read_score(tmp_path / "round-0.json", {"seed": 1})
    (tmp_path / "round-0.json").write_text(json.dumps({**record, "stop": True}))
    with pytest.raises(FormatError, match="round-0.json was altered after fit-round wrote it"):
        read_score(tmp_path / "round-0.json", {})
    (tmp_path / "round-0.json").write_text(json.dumps(record))
    write_round(tmp_path / "round-0.h5", rows=60)  # another state beside the score
    with pytest.raises(FormatError, match="round-0.h5 is not the round state round-0.json was scored from"):
        read_score(tmp_path / "round-0.json", {})
    (tmp_path / "round-0.json").write_text("{not json")
    with pytest.raises(FormatError, match="round-0.json cannot be read .* delete .* and rerun"):
        read_score(tmp_path / "round-0.json", {})


def test_a_round_file_gives_back_the_statistics_it_was_written_with(tmp_path):
    written = write_round(tmp_path / "round-0.h5")
    state, correlation, meta = h5format.read_round_state(tmp_path / "round-0.h5", {"round": 0, "seed": 0})
    train, _ = SplitStream.from_state(state, backend="numpy").finish()
    expected, _ = written.finish()
    assert np.array_equal(train.sxx, expected.sxx) and np.array_equal(train.sxy, expected.sxy)
    assert meta["row_stop"] == 50 and np.array_equal(correlation, np.linspace(0, 1, N_EXAMPLES))


def test_a_round_file_of_another_round_or_seed_or_with_a_flipped_bit_is_refused(tmp_path):
    path = tmp_path / "round-0.h5"
    write_round(path)
    with pytest.raises(FormatError, match=r"round-0\.h5 was made with round 0 but this run has 1"):
        h5format.read_round_state(path, {"round": 1})
    with pytest.raises(FormatError, match="seed 0 but this run has 1"):
        h5format.read_round_state(path, {"seed": 1})
    flip_a_byte(path, "train/sxy")
    with pytest.raises(FormatError, match=r"dataset 'train/sxy' .* fail their checksum"):
        h5format.read_round_state(path, {})
