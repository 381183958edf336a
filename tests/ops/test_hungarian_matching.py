"""Tests for max_deeplab_tf.ops.hungarian_matching.

Truths: scipy.optimize.linear_sum_assignment on the valid submatrix (total
cost), brute force over itertools.permutations for sizes <= 7, hand-worked
2x2 / 3x3 cases, and the repair formula written out in numpy for the graph
behaviour on non-finite costs. More than 2,000 random problems are solved,
batched by shape so that few XLA compilations are needed.
"""

import importlib
import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from max_deeplab_tf.ops import hungarian_matching

# The package exports the function under the module's name.
matching_module = importlib.import_module(
    "max_deeplab_tf.ops.hungarian_matching")

REL_TOL = 1e-6
# Only matters for totals that are exactly or nearly 0.
ABS_TOL = 1e-9


def scipy_total(cost, valid):
    sub = np.asarray(cost, np.float64)[:, valid]
    if sub.size == 0:
        return 0.0
    rows, cols = linear_sum_assignment(sub)
    return float(sub[rows, cols].sum())


def brute_force_total(cost, valid):
    sub = np.asarray(cost, np.float64)[:, valid]
    num_rows, num_cols = sub.shape
    if min(num_rows, num_cols) == 0:
        return 0.0
    if num_rows <= num_cols:
        perms = np.array(list(itertools.permutations(range(num_cols),
                                                     num_rows)))
        return float(sub[np.arange(num_rows), perms].sum(axis=1).min())
    perms = np.array(list(itertools.permutations(range(num_rows), num_cols)))
    return float(sub[perms, np.arange(num_cols)].sum(axis=1).min())


def check_assignments(assignment, cost, valid, truth=scipy_total):
    """Validity and optimality of every batch element; returns the count."""
    assignment = np.asarray(assignment)
    cost = np.asarray(cost, np.float64)
    assert assignment.dtype == np.float32
    assert assignment.shape == cost.shape
    for b in range(cost.shape[0]):
        x = assignment[b]
        assert np.isin(x, (0.0, 1.0)).all(), f"element {b}: not 0/1"
        assert (x.sum(axis=0) <= 1).all(), f"element {b}: column reused"
        assert (x.sum(axis=1) <= 1).all(), f"element {b}: row reused"
        assert not x[:, ~valid[b]].any(), f"element {b}: invalid column used"
        want_pairs = min(cost.shape[1], int(valid[b].sum()))
        assert int(x.sum()) == want_pairs, (
            f"element {b}: {int(x.sum())} pairs, want {want_pairs}")
        got = float(np.where(x > 0, cost[b], 0.0).sum())
        want = truth(cost[b], valid[b])
        assert math.isclose(got, want, rel_tol=REL_TOL, abs_tol=ABS_TOL), (
            f"element {b}: total {got!r}, optimum {want!r}")
    return cost.shape[0]


def run(cost, valid=None, mode="eager"):
    # Always passing a mask keeps the number of traces (and XLA
    # compilations, ~1 s each) down; test_no_mask_means_all_valid covers
    # valid_columns=None.
    cost = np.asarray(cost)
    if valid is None:
        valid = all_valid(cost.shape[0], cost.shape[2])
    cost = tf.constant(cost)
    valid_t = tf.constant(valid)
    if mode == "eager":
        return hungarian_matching(cost, valid_t).numpy()
    fn = tf.function(hungarian_matching, jit_compile=(mode == "xla"))
    return fn(cost, valid_t).numpy()


def all_valid(batch, cols):
    return np.ones((batch, cols), bool)


def random_valid(rng, batch, cols, low=0):
    """Valid-column masks with a random number (low..cols) of valid columns
    at random positions."""
    valid = np.zeros((batch, cols), bool)
    for b in range(batch):
        count = rng.integers(low, cols + 1)
        valid[b, rng.permutation(cols)[:count]] = True
    return valid


def loss_like(rng, batch, rows, cols):
    """-(class probability x Dice): mostly near 0, some good pairs."""
    prob = rng.dirichlet(np.full(8, 0.3), size=(batch, rows))
    prob = prob[:, :, rng.integers(0, 8, size=cols)]
    dice = rng.beta(0.5, 6.0, size=(batch, rows, cols))
    good = rng.random((batch, rows, cols)) < 0.05
    dice = np.where(good, rng.uniform(0.5, 0.95, dice.shape), dice)
    return -(prob * dice)


# ---------------------------------------------------------------------------
# Hand-worked cases.


def test_two_by_two_hand_worked():
    # Diagonal 1 + 1 = 2 beats the anti-diagonal 2 + 3 = 5.
    cost = np.array([[[1.0, 2.0], [3.0, 1.0]]])
    np.testing.assert_array_equal(run(cost)[0], [[1, 0], [0, 1]])


def test_no_mask_means_all_valid():
    cost = np.array([[[1.0, 2.0], [3.0, 1.0]], [[1.0, 2.0], [0.0, 5.0]]])
    out = hungarian_matching(tf.constant(cost)).numpy()
    np.testing.assert_array_equal(out, [[[1, 0], [0, 1]], [[0, 1], [1, 0]]])


def test_three_by_three_hand_worked_greedy_is_wrong():
    # Taking the smallest entry (0, 0) = 0 first forces row 1 onto a 9:
    # 0 + 9 + 2 = 11 at best. The optimum avoids the 0:
    # (0, 1) + (1, 0) + (2, 2) = 1 + 1 + 2 = 4.
    cost = np.array([[[0.0, 1.0, 9.0],
                      [1.0, 9.0, 9.0],
                      [9.0, 9.0, 2.0]]])
    np.testing.assert_array_equal(run(cost)[0],
                                  [[0, 1, 0], [1, 0, 0], [0, 0, 1]])


def test_rectangular_picks_best_rows_and_masked_column_never_used():
    # 3 rows, columns 0 and 2 valid: column 0 -> row 2 (0.1), column 2 ->
    # row 0 (0.2); column 1 (cheapest everywhere) is padding.
    cost = np.array([[[0.9, -5.0, 0.2],
                      [0.5, -5.0, 0.8],
                      [0.1, -5.0, 0.9]]])
    valid = np.array([[True, False, True]])
    np.testing.assert_array_equal(run(cost, valid)[0],
                                  [[0, 0, 1], [0, 0, 0], [1, 0, 0]])


# ---------------------------------------------------------------------------
# Random problems against scipy (>= 2,000) and brute force.


def _families(rng):
    """(name, cost, valid) batches, one shape each (each new shape costs an
    XLA compilation); >= 2,000 problems in all."""

    def mix(*parts):
        names, costs, valids = zip(*parts)
        return (" + ".join(names), np.concatenate(costs),
                np.concatenate(valids))

    def ties(low, high, shape):
        return rng.integers(low, high, shape) * 1.0

    return [
        mix(("uniform", rng.uniform(size=(200, 6, 6)), all_valid(200, 6)),
            ("normal", rng.normal(size=(150, 6, 6)), all_valid(150, 6)),
            ("integer ties", ties(0, 3, (250, 6, 6)), all_valid(250, 6)),
            ("integer ties masked", ties(-2, 2, (200, 6, 6)),
             random_valid(rng, 200, 6)),
            ("all equal", np.full((20, 6, 6), 0.7), all_valid(20, 6)),
            ("all equal masked", np.full((20, 6, 6), -3.0),
             random_valid(rng, 20, 6)),
            ("loss-like", loss_like(rng, 100, 6, 6), all_valid(100, 6))),
        mix(("normal", rng.normal(size=(150, 4, 7)), all_valid(150, 7)),
            ("integer ties masked", ties(0, 4, (150, 4, 7)),
             random_valid(rng, 150, 7)),
            ("all equal", np.zeros((10, 4, 7)), all_valid(10, 7)),
            ("loss-like masked", loss_like(rng, 100, 4, 7),
             random_valid(rng, 100, 7))),
        mix(("normal", rng.normal(size=(150, 7, 4)), all_valid(150, 4)),
            ("integer ties masked", ties(0, 4, (150, 7, 4)),
             random_valid(rng, 150, 4)),
            ("all equal", np.ones((10, 7, 4)), all_valid(10, 4))),
        mix(("1x1", rng.normal(size=(20, 1, 1)), random_valid(rng, 20, 1))),
        mix(("uniform masked", rng.uniform(size=(150, 12, 24)),
             random_valid(rng, 150, 24)),
            ("loss-like masked", loss_like(rng, 100, 12, 24),
             random_valid(rng, 100, 24))),
        mix(("uniform", rng.uniform(size=(100, 20, 20)), all_valid(100, 20)),
            ("integer ties", ties(0, 5, (50, 20, 20)), all_valid(50, 20))),
        mix(("loss-like masked", loss_like(rng, 16, 128, 50),
             random_valid(rng, 16, 50))),
        mix(("uniform", rng.uniform(size=(8, 64, 64)), all_valid(8, 64))),
    ]


def test_random_problems_match_scipy():
    rng = np.random.default_rng(2024)
    solved = 0
    for name, cost, valid in _families(rng):
        assignment = run(cost, valid)
        try:
            solved += check_assignments(assignment, cost, valid)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e
    assert solved >= 2000, solved


# Shape shared by the small tests below, so they share one compilation.
SMALL = (6, 5, 7)


def test_zero_valid_columns_gives_empty_assignment():
    rng = np.random.default_rng(1)
    cost = rng.normal(size=SMALL)
    valid = np.zeros(SMALL[::2], bool)
    valid[1, 2] = True  # Element 1 has one valid column.
    out = run(cost, valid)
    assert not np.delete(out, 1, axis=0).any()
    assert out[1].sum() == 1 and out[1][:, 2].sum() == 1
    assert out[1][np.argmin(cost[1, :, 2]), 2] == 1


def test_small_problems_match_brute_force():
    # Random valid-column masks turn the 7x7 and 4x7 problems into every
    # 7xk and 4xk (k <= 7) shape, both orientations.
    rng = np.random.default_rng(7)
    solved = 0
    for rows in (7, 4):
        cost = np.concatenate([rng.normal(size=(60, rows, 7)),
                               rng.integers(0, 3, (60, rows, 7)) * 1.0])
        valid = random_valid(rng, 120, 7)
        solved += check_assignments(run(cost, valid), cost, valid,
                                    truth=brute_force_total)
    assert solved == 240


@pytest.mark.parametrize("rows", [12, 4])
def test_padded_columns_are_solved_on_the_valid_ones_eagerly(rows):
    # DETR-style padding: 40 columns, at most 5 valid per element. Eagerly
    # the valid columns are gathered into an 8-wide problem (the next power
    # of two), solved, and scattered back to their columns. With 4 rows,
    # elements with 5 valid columns have more columns than rows.
    rng = np.random.default_rng(11)
    cost = np.concatenate([loss_like(rng, 30, rows, 40),
                           rng.integers(0, 3, (30, rows, 40)) * 1.0])
    valid = np.zeros((60, 40), bool)
    for b in range(60):
        valid[b, rng.permutation(40)[:rng.integers(0, 6)]] = True
    valid[0, [0, 39]] = True  # the first and the last column
    assert matching_module._compact_width(tf.constant(valid)) == 8
    solved = check_assignments(run(cost, valid), cost, valid)
    assert solved == 60
    # Inside a graph the whole padded problem is solved: same totals.
    check_assignments(run(cost, valid, mode="graph"), cost, valid)


def test_float32_and_integer_inputs():
    rng = np.random.default_rng(3)
    cost32 = rng.uniform(-1, 0, size=(40, 9, 6)).astype(np.float32)
    check_assignments(run(cost32), cost32.astype(np.float64),
                      all_valid(40, 6))
    cost_int = rng.integers(-50, 50, (40, 6, 9)).astype(np.int32)
    check_assignments(run(cost_int), cost_int, all_valid(40, 9))


# ---------------------------------------------------------------------------
# Execution modes, dynamic shapes, determinism.


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_graph_and_xla_paths(mode):
    rng = np.random.default_rng(11)
    cost = rng.normal(size=(30, 10, 14)).astype(np.float32)
    valid = random_valid(rng, 30, 14)
    valid[0] = True  # More valid columns than rows.
    valid[1] = False
    out = run(cost, valid, mode)
    check_assignments(out, cost, valid)
    # The same XLA solver runs in every mode.
    np.testing.assert_array_equal(out, run(cost, valid, "eager"))


def test_large_batches_take_the_split_row_gather():
    """From 4096 gathered values a step the solver reads cost rows with a
    gather that XLA may split over threads (see _shortest_augmenting_paths);
    it must give the same optimum."""
    rng = np.random.default_rng(14)
    cost = np.concatenate([rng.uniform(size=(20, 16, 256)),
                           loss_like(rng, 20, 16, 256)])
    valid = random_valid(rng, 40, 256, low=1)
    # Still large enough if the threshold moves.
    assert 40 * 256 >= matching_module._SPLIT_GATHER_VALUES
    check_assignments(run(cost, valid), cost, valid)


def test_plain_graph_solver_without_xla():
    # The solver as an ordinary graph (what benchmarks/matcher.py times).
    rng = np.random.default_rng(12)
    cost = rng.normal(size=(20, 8, 11))
    valid = random_valid(rng, 20, 11)
    solve = tf.function(matching_module._solve, autograph=False)
    out, finite = solve(tf.constant(cost), tf.constant(valid), tf.float64)
    assert bool(finite)
    check_assignments(out.numpy(), cost, valid)


def test_float32_compute_dtype_for_tpu():
    # Off TPU the search runs in float64.
    assert matching_module._compute_dtype() == tf.float64
    # The TPU path (no float64). Totals still match at 1e-6 here.
    rng = np.random.default_rng(13)
    cost = rng.uniform(size=(20, 16, 16)).astype(np.float32)
    valid = random_valid(rng, 20, 16)
    solve = tf.function(matching_module._solve, jit_compile=True,
                        autograph=False)
    out, _ = solve(tf.constant(cost), tf.constant(valid), tf.float32)
    check_assignments(out.numpy(), cost.astype(np.float64), valid)


def test_dynamic_shapes_in_graph():
    fn = tf.function(hungarian_matching, input_signature=[
        tf.TensorSpec([None, None, None], tf.float32),
        tf.TensorSpec([None, None], tf.bool)])
    rng = np.random.default_rng(5)
    for shape in [(3, 4, 6), (2, 7, 3), (0, 3, 3), (2, 0, 4), (2, 4, 0)]:
        # The two non-empty shapes compile; the empty ones skip the solver.
        cost = rng.normal(size=shape).astype(np.float32)
        valid = random_valid(rng, shape[0], shape[2])
        out = fn(tf.constant(cost), tf.constant(valid)).numpy()
        assert out.shape == shape
        check_assignments(out, cost, valid)


def test_empty_problems_eager():
    for shape in [(0, 3, 3), (2, 0, 4), (2, 4, 0)]:
        out = run(np.zeros(shape, np.float32))
        assert out.shape == shape and out.dtype == np.float32
        assert not out.any()


def test_deterministic_and_independent_of_batch_neighbours():
    rng = np.random.default_rng(17)
    # Many ties: the case where a nondeterministic order would show.
    cost = rng.integers(0, 2, (120, 7, 7)) * 1.0
    valid = random_valid(rng, 120, 7)
    first = run(cost, valid)
    np.testing.assert_array_equal(first, run(cost, valid))
    # Each element's result is the same whatever its batch neighbours.
    perm = rng.permutation(120)
    np.testing.assert_array_equal(first[perm], run(cost[perm], valid[perm]))


# ---------------------------------------------------------------------------
# Non-finite costs and bad inputs.


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_cost_raises_eagerly(bad):
    cost = np.zeros(SMALL)
    cost[1, 2, 3] = bad
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"`cost` must be finite.*cost\[1, 2, 3\]"):
        run(cost)


def test_non_finite_in_invalid_columns_is_ignored():
    rng = np.random.default_rng(19)
    cost = rng.normal(size=SMALL)
    valid = random_valid(rng, SMALL[0], SMALL[2])
    cost = np.where(valid[:, None, :], cost, np.nan)
    cost[0, 0, ~valid[0]] = -np.inf
    check_assignments(run(cost, valid), np.nan_to_num(cost), valid)


def repaired(cost, valid):
    """The documented graph-mode repair of non-finite valid entries."""
    out = np.array(cost, np.float64)
    for b in range(out.shape[0]):
        values = out[b][:, valid[b]]
        finite = values[np.isfinite(values)]
        hi = finite.max() if finite.size else 0.0
        lo = finite.min() if finite.size else 0.0
        spread = hi - lo + 1.0
        sub = out[b][:, valid[b]]
        sub = np.where(np.isnan(sub) | (sub == np.inf), hi + spread, sub)
        sub = np.where(sub == -np.inf, lo - spread, sub)
        out[b][:, valid[b]] = sub
    return out


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_non_finite_in_graph_is_repaired_not_hung(mode):
    rng = np.random.default_rng(23)
    cost = rng.normal(size=SMALL)
    valid = random_valid(rng, SMALL[0], SMALL[2], low=1)
    cost[0, 1, :] = np.nan
    cost[1, :, :] = np.inf  # Nothing finite: every entry equal.
    cost[2, 2, 3] = -np.inf
    cost[3, rng.random((5, 7)) < 0.5] = np.nan
    cost[4, 0, 0] = np.inf
    cost[4, 4, 6] = -np.inf
    out = run(cost, valid, mode)
    check_assignments(out, repaired(cost, valid), valid)
    # -inf is the cheapest entry, so (2, 3) is taken when column 3 is valid.
    if valid[2, 3]:
        assert out[2, 2, 3] == 1


def test_bad_inputs_raise_value_errors_naming_the_tensor():
    with pytest.raises(ValueError, match="`cost` must have shape"):
        hungarian_matching(tf.zeros([3, 3]))
    with pytest.raises(ValueError, match="`cost` must be a real"):
        hungarian_matching(tf.zeros([1, 2, 2], tf.bool))
    with pytest.raises(ValueError, match="`valid_columns` must be a bool"):
        hungarian_matching(tf.zeros([1, 2, 3]), tf.ones([1, 3]))
    with pytest.raises(ValueError, match="`valid_columns` must have shape"):
        hungarian_matching(tf.zeros([1, 2, 3]), tf.ones([1, 2], tf.bool))
    with pytest.raises(ValueError, match="`valid_columns` must have shape"):
        hungarian_matching(tf.zeros([2, 2, 3]), tf.ones([1, 3], tf.bool))
    # Traced: an unknown size passes where it may match, not where it can't.
    def traced(valid_shape):
        return tf.function(hungarian_matching, input_signature=[
            tf.TensorSpec([1, 2, 3]),
            tf.TensorSpec(valid_shape, tf.bool)]).get_concrete_function()
    traced([None, 3])
    with pytest.raises(ValueError, match="`valid_columns` must have shape"):
        traced([None, 2])
