"""Exact batched minimum-cost assignment (Hungarian matching) in TensorFlow.

`hungarian_matching(cost, valid_columns)` returns, for every batch element,
the 0/1 assignment that scipy.optimize.linear_sum_assignment returns on the
valid submatrix (same total cost; ties may be broken differently). It is pure
TensorFlow (no Python callbacks, no numpy), runs eagerly, under tf.function and
under tf.function(jit_compile=True), and is deterministic.

Algorithm: shortest augmenting paths (Jonker-Volgenant as simplified by
Crouse, the method behind scipy's linear_sum_assignment), vectorised over
the batch.
  * The smaller side is augmented ("items") over the larger side
    ("targets"), so a [batch, 128, K] loss-sized problem needs at most K
    augmentations. Per batch element: if it has no more valid columns than
    rows, the items are its valid columns (gathered to the front) and the
    targets are the rows; otherwise the items are the rows and the targets
    are the valid columns.
  * Initialisation: each item takes its cheapest target (row reduction with
    target duals v = 0); a contested target goes to the lowest item index.
    Free targets keep v = 0, which keeps the method exact when there are
    more targets than items.
  * Every remaining free item is then augmented with a Dijkstra search over
    the reduced costs. One iteration of a single flat tf.while_loop does one
    step for every batch element at once: scan one target, or flip one edge
    of a found augmenting path. Elements move on to their next free item
    independently, so the loop runs for the largest per-element number of
    steps, not the sum over elements. Ties prefer a free target, then the
    lowest index, so the result is deterministic.
  * A search always scans a valid, not yet scanned target and a free valid
    target always exists, so the loop ends whatever the numerical values;
    its iteration bound is only a safeguard.

Precision: the search runs in float64 (float32 inputs are exact in it,
integer costs below 2**53 stay exact, and rounding of the dual updates is
~1e-16 relative: far below the 1e-6 at which totals are compared with
scipy). On TPU, which has no float64, it runs in float32: rounding can then
pick an assignment whose total is off by a few float32 ulps per pair (it
still matched scipy at 1e-6 on the 16x16 test and on 128x128 / 128x50 /
128x181 uniform and loss-like problems).

Non-finite costs (NaN or +-inf in a valid column; invalid columns are never
read and may hold anything):
  * Eagerly: tf.errors.InvalidArgumentError naming `cost` and the first bad
    [batch, row, column] position.
  * Inside a graph (tf.function, with or without jit_compile) nothing can be
    raised cheaply, so NaN and +inf are replaced by
    hi = max_finite + (max_finite - min_finite) + 1 and -inf by
    lo = min_finite - (max_finite - min_finite) - 1, with max_finite and
    min_finite over the finite valid entries of that batch element (0 if
    none). The result is the optimal assignment of that repaired matrix: a
    valid assignment with min(rows, valid columns) pairs, and no hang.

XLA: the solver always runs as a nested tf.function(jit_compile=True): on
the 2-core CPU it is 2-15x faster than the same ops as a plain graph (a loop
step is a few dozen tiny ops; see benchmarks/matcher.py). Inside an outer
XLA function it is simply inlined. Sizes may change from call to call; each
new shape is compiled once (~1.3 s on the 2-core CPU). XLA:CPU splits ops
it deems large over its intra-op threads; a split costs a thread handoff,
which inside the loop (one per step) outweighs the work unless the batch is
large, so the per-step cost-row gather is written so that XLA keeps it on
one thread below 4096 gathered values a step (see
`_shortest_augmenting_paths`). The set-up ops over the whole cost matrix
may still be split; they run once per call.

Eager calls (a DETR-style matcher calling it like scipy, once per batch)
run a concrete function kept per input signature, which skips most of
tf.function's per-call argument handling, and solve only the valid columns
when valid_columns leaves enough of them out (the largest count per batch
element, rounded up to a power of two, below the number of columns): a
padded [8, 128, 181] problem with 5-60 real
columns is solved as [8, 128, 64]. Inside a graph the whole padded problem
is solved, as its sizes are static.
"""

import functools

import numpy as np
import tensorflow as tf

__all__ = ["hungarian_matching"]

# From this many cost values gathered per search step (batch x targets),
# the step's row gather is left to XLA to split over threads (see
# _shortest_augmenting_paths).
_SPLIT_GATHER_VALUES = 4096


def hungarian_matching(cost, valid_columns=None) -> tf.Tensor:
    """Minimum-cost assignment of rows to (valid) columns, batched.

    Args:
      cost: float tensor [batch, num_rows, num_cols] (integer tensors are
        cast to float64). Entries in invalid columns are ignored and may be
        anything, including NaN.
      valid_columns: optional bool tensor [batch, num_cols]; False marks a
        padded column that must not be assigned. None means all valid.

    Returns:
      float32 tensor [batch, num_rows, num_cols] of zeros and ones. For each
      batch element it pairs exactly min(num_rows, number of valid columns)
      rows with distinct valid columns, each row and column at most once,
      with the minimum total cost (the total of
      scipy.optimize.linear_sum_assignment on the valid submatrix).

    Raises:
      ValueError: if `cost` is not a real tensor of rank 3, or
        `valid_columns` is not a bool tensor of shape [batch, num_cols].
      tf.errors.InvalidArgumentError: eagerly, if a valid entry of `cost` is
        not finite (see the module docstring for the graph behaviour).
    """
    cost, valid_columns = _check_inputs(cost, valid_columns)
    compute_dtype = _compute_dtype()
    static = cost.shape.as_list()
    if None not in static and 0 in static:
        return tf.zeros(static, tf.float32)
    if tf.executing_eagerly():
        assignment, all_finite = _eager_solver(
            tuple(static), cost.dtype, valid_columns is not None,
            compute_dtype, _compact_width(valid_columns)
        )(cost, *_present(valid_columns))
    elif None not in static:
        assignment, all_finite = _solve_xla(cost, valid_columns,
                                            compute_dtype)
    else:
        # Unknown sizes in a graph: an empty problem must not reach the
        # solver, whose reductions over items need at least one item.
        assignment, all_finite = tf.cond(
            tf.size(cost) > 0,
            lambda: _solve_xla(cost, valid_columns, compute_dtype),
            lambda: (tf.zeros(tf.shape(cost), tf.float32),
                     tf.constant(True)))
    if tf.executing_eagerly() and not bool(all_finite):
        _raise_not_finite(cost, valid_columns)
    return assignment


def _check_inputs(cost, valid_columns):
    cost = tf.convert_to_tensor(cost)
    if cost.dtype == tf.bool or not (cost.dtype.is_floating
                                     or cost.dtype.is_integer):
        raise ValueError(
            f"hungarian_matching: `cost` must be a real (float) tensor, got "
            f"dtype {cost.dtype.name}.")
    if cost.shape.rank != 3:
        raise ValueError(
            f"hungarian_matching: `cost` must have shape "
            f"[batch, num_rows, num_cols], got shape {cost.shape}.")
    if not cost.dtype.is_floating:
        cost = tf.cast(cost, tf.float64)
    if valid_columns is None:
        return cost, None
    valid_columns = tf.convert_to_tensor(valid_columns)
    if valid_columns.dtype != tf.bool:
        raise ValueError(
            f"hungarian_matching: `valid_columns` must be a bool tensor, got "
            f"dtype {valid_columns.dtype.name}.")
    expected = [cost.shape[0], cost.shape[2]]
    # Eagerly both shapes are known: comparing lists is a few microseconds
    # of the call instead of TensorShape's checks.
    if (valid_columns.shape.as_list() != expected
            if tf.executing_eagerly()
            else not valid_columns.shape.is_compatible_with(expected)):
        raise ValueError(
            f"hungarian_matching: `valid_columns` must have shape "
            f"[batch, num_cols] = {tf.TensorShape(expected)} to match "
            f"`cost` of shape {cost.shape}, got shape "
            f"{valid_columns.shape}.")
    return cost, valid_columns


def _raise_not_finite(cost, valid_columns):
    bad = tf.logical_not(tf.math.is_finite(cost))
    if valid_columns is not None:
        bad = tf.logical_and(bad, valid_columns[:, None, :])
    b, r, c = tf.where(bad)[0].numpy().tolist()
    raise tf.errors.InvalidArgumentError(
        None, None,
        f"hungarian_matching: `cost` must be finite in valid columns, but "
        f"cost[{b}, {r}, {c}] = {cost[b, r, c].numpy()}.")


def _compute_dtype():
    # TPUs have no float64; everywhere else float64 keeps the search exact
    # far below the tolerance totals are compared at.
    if tf.distribute.has_strategy():
        if "TPU" in type(tf.distribute.get_strategy()).__name__:
            return tf.float32
    return tf.float64


def _repair_non_finite(cost, valid3):
    """Replaces non-finite valid entries as the module docstring says."""
    usable = tf.logical_and(valid3, tf.math.is_finite(cost))
    inf = tf.constant(np.inf, cost.dtype)
    zero = tf.zeros([], cost.dtype)
    any_usable = tf.reduce_any(usable, axis=[1, 2])
    hi = tf.reduce_max(tf.where(usable, cost, -inf), axis=[1, 2])
    lo = tf.reduce_min(tf.where(usable, cost, inf), axis=[1, 2])
    hi = tf.where(any_usable, hi, zero)
    lo = tf.where(any_usable, lo, zero)
    spread = hi - lo + 1
    repaired = tf.where(cost < 0, (lo - spread)[:, None, None],
                        (hi + spread)[:, None, None])
    return tf.where(usable, cost, repaired)


def _solve(cost, valid, compute_dtype):
    """The solver (see the module docstring).

    Args:
      cost: float [B, R, C], R and C > 0.
      valid: bool [B, C] or None (all valid).
      compute_dtype: tf.float64 or tf.float32.

    Returns:
      float32 [B, R, C] assignment, and a bool scalar: whether every valid
      entry of `cost` was finite.
    """
    col, all_finite = _solve_columns(cost, valid, compute_dtype)
    return tf.one_hot(col, tf.shape(cost)[2], dtype=tf.float32), all_finite


def _solve_columns(cost, valid, compute_dtype, valid_first=False):
    """`_solve`, returning the column matched to each row instead.

    Args:
      cost, valid, compute_dtype: as `_solve`'s.
      valid_first: Whether every batch element's valid columns come before
        its invalid ones (so they need no sorting).

    Returns:
      int32 [B, R]: the column assigned to each row, -1 for none; and the
      bool scalar of `_solve`.
    """
    static_r, static_c = cost.shape[1], cost.shape[2]
    shape = tf.shape(cost)
    batch, num_rows, num_cols = shape[0], shape[1], shape[2]
    num_items = tf.minimum(num_rows, num_cols)
    num_targets = tf.maximum(num_rows, num_cols)
    if valid is None:
        valid = tf.ones(tf.stack([batch, num_cols]), tf.bool)
    cost = tf.cast(cost, compute_dtype)
    valid3 = tf.broadcast_to(valid[:, None, :], shape)
    all_finite = tf.reduce_all(
        tf.logical_or(tf.math.is_finite(cost), tf.logical_not(valid3)))
    cost = tf.cond(all_finite, lambda: cost,
                   lambda: _repair_non_finite(cost, valid3))
    cost = tf.where(valid3, cost, tf.zeros([], compute_dtype))
    num_valid = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)

    # Valid columns as items (in column order), rows as targets.
    if valid_first:
        order = tf.broadcast_to(tf.range(num_items)[None, :],
                                tf.stack([batch, num_items]))
        a = tf.transpose(cost, [0, 2, 1])[:, :num_items]
    else:
        order = tf.argsort(tf.cast(tf.logical_not(valid), tf.int32), axis=1,
                           stable=True)[:, :num_items]
        a = tf.gather(tf.transpose(cost, [0, 2, 1]), order, batch_dims=1)
    a = tf.pad(a, [[0, 0], [0, 0], [0, num_targets - num_rows]])
    item_active = tf.range(num_items)[None, :] < num_valid[:, None]
    target_valid = tf.broadcast_to(tf.range(num_targets)[None, :] < num_rows,
                                   tf.stack([batch, num_targets]))

    # Rows as items, valid columns as targets, for the batch elements with
    # more valid columns than rows (only possible if num_cols > num_rows).
    flip_possible = (static_r is None or static_c is None
                     or static_c > static_r)
    if flip_possible:
        flip = num_valid > num_rows
        if static_r is not None and static_c is not None:
            a_flip = cost  # Already [B, S = R, L = C].
        else:
            a_flip = cost[:, :num_items, :num_targets]
            a_flip = tf.pad(a_flip, [
                [0, 0], [0, num_items - tf.shape(a_flip)[1]],
                [0, num_targets - tf.shape(a_flip)[2]]])
        a = tf.cond(tf.reduce_any(flip),
                    lambda: tf.where(flip[:, None, None], a_flip, a),
                    lambda: a)
        item_active = tf.logical_or(item_active, flip[:, None])
        valid_flip = tf.pad(valid, [[0, 0], [0, num_targets - num_cols]])
        target_valid = tf.where(flip[:, None], valid_flip, target_valid)

    item_to_target, target_to_item = _shortest_augmenting_paths(
        a, item_active, target_valid)

    # The column matched to each row, -1 for none.
    item_of_row = target_to_item[:, :num_rows]
    col = tf.where(item_of_row >= 0,
                   tf.gather(order, tf.maximum(item_of_row, 0), batch_dims=1),
                   -1)
    if flip_possible:
        col_flip = tf.pad(item_to_target,
                          [[0, 0], [0, num_targets - num_items]],
                          constant_values=-1)[:, :num_rows]
        col = tf.where(flip[:, None], col_flip, col)
    return col, all_finite


def _shortest_augmenting_paths(a, item_active, target_valid):
    """Solves min-cost assignment of every active item to a valid target.

    Only the target duals v are stored: on a matched edge u_i + v_j = a_ij,
    so the dual of a matched item is a_i,t(i) - v_t(i), and the root of a
    search may take u = 0 (that shifts all its distances equally; only the
    root's edges can then be negative, which Dijkstra tolerates).

    Args:
      a: [B, S, L] finite costs, items x targets.
      item_active: bool [B, S]; per batch element, at most as many as there
        are valid targets.
      target_valid: bool [B, L].

    Returns:
      item_to_target int32 [B, S] and target_to_item int32 [B, L], -1 where
      unassigned.
    """
    dtype = a.dtype
    shape = tf.shape(a)
    batch, num_items, num_targets = shape[0], shape[1], shape[2]
    inf = tf.constant(np.inf, dtype)
    zero = tf.zeros([], dtype)
    item_ids = tf.range(num_items)[None, :]
    target_ids = tf.range(num_targets)[None, :]

    # Row reduction with v = 0: every item takes its cheapest target (the
    # lowest index on ties) unless a lower-index item takes it too.
    allowed = tf.logical_and(item_active[:, :, None], target_valid[:, None, :])
    masked = tf.where(allowed, a, inf)
    row_min = tf.reduce_min(masked, axis=2, keepdims=True)
    best = tf.reduce_min(
        tf.where(tf.equal(masked, row_min), target_ids[:, None, :],
                 num_targets), axis=2)
    best = tf.where(item_active, best, num_targets)
    # winner[t]: the lowest active item whose cheapest target is t. A
    # compare-and-reduce over [batch, items, targets] fuses into one kernel;
    # a scatter would be a serial loop on CPU.
    winner = tf.reduce_min(
        tf.where(tf.equal(best[:, :, None], target_ids[:, None, :]),
                 item_ids[:, :, None], num_items), axis=1)
    won = tf.logical_and(
        item_active, tf.equal(tf.gather(winner, tf.minimum(
            best, num_targets - 1), batch_dims=1), item_ids))
    item_to_target = tf.where(won, best, -1)
    target_to_item = tf.where(winner < num_items, winner, -1)

    # The remaining free items, in index order, are the search roots.
    free = tf.logical_and(item_active, item_to_target < 0)
    roots = tf.argsort(tf.cast(tf.logical_not(free), tf.int32), axis=1,
                       stable=True)
    num_roots = tf.reduce_sum(tf.cast(free, tf.int32), axis=1)

    # Loop state, kept small because every array costs a pass per step:
    #   v: target duals; a target scanned in the current search holds
    #     v_j + d_j (its distance added ahead of Crouse's update
    #     v_j -= min_val - d_j, finished by subtracting min_val at the sink).
    #   dist: tentative distances of the current search, -inf once scanned.
    #   pred: predecessor item of each target in the search tree.
    #   root_index: which root is being searched (done when >= num_roots).
    #   cur_row: [batch, 1] the row of a_rows (below) of the item being
    #     scanned, cur.
    #   flip_target: -1 while searching, else the target reached while
    #     flipping the augmenting path back to the root.
    # Every step reads the cost row of item cur. As a gather from all rows
    # [batch * items, targets] with a loop-carried [batch, 1] index it stays
    # one plain gather op on one thread. Written as a gather with batch_dims
    # instead, XLA fuses the index arithmetic into it, its cost model then
    # counts the whole matrix and splits every step's gather over two
    # threads: on the 2-core CPU a thread handoff per step, which made the
    # loop 2.2x slower for [8, 128, 128] (21.4 vs 9.7 ms a call), but 1.2x
    # faster for [64, 128, 128] (152 vs 188 ms), where each step gathers
    # 8192 values (min of 9 calls each, one process, load average ~6).
    # Hence the split gather from 4096 gathered values a step (between the
    # two measured sizes) when the sizes are known.
    a_rows = tf.reshape(a, tf.stack([batch * num_items, num_targets]))
    row_base = tf.range(batch) * num_items
    static_batch, static_targets = a.shape[0], a.shape[2]
    split_row_gather = (static_batch is not None
                        and static_targets is not None
                        and static_batch * static_targets
                        >= _SPLIT_GATHER_VALUES)
    state = (
        tf.zeros([batch, num_targets], dtype),
        tf.fill([batch, num_targets], inf),
        tf.zeros([batch, num_targets], tf.int32),
        item_to_target, target_to_item,
        tf.zeros([batch], tf.int32), (row_base + roots[:, 0])[:, None],
        tf.fill([batch], -1))
    neg_inf = -inf

    def body(v, dist, pred, item_to_target, target_to_item, root_index,
             cur_row, flip_target):
        cur = cur_row[:, 0] - row_base
        scanning = tf.logical_and(root_index < num_roots, flip_target < 0)
        scanning2 = scanning[:, None]

        # Scan step: relax the targets reached through item `cur`. Its dual
        # is a[cur, t] - v_t for its matched target t, or 0 for the root;
        # the distance of t is already in v_t, hence:
        if split_row_gather:
            row = tf.gather(a, cur, batch_dims=1)
        else:
            row = tf.gather_nd(a_rows, cur_row)
        matched = tf.gather(item_to_target, cur, batch_dims=1)
        safe = tf.maximum(matched, 0)
        offset = tf.where(matched >= 0,
                          tf.gather(v, safe, batch_dims=1) -
                          tf.gather(row, safe, batch_dims=1), zero)
        reduced = row - v + offset[:, None]
        open_ = tf.logical_and(target_valid, dist > neg_inf)
        better = tf.logical_and(tf.logical_and(open_, reduced < dist),
                                scanning2)
        pred = tf.where(better, cur[:, None], pred)
        dist = tf.where(better, reduced, dist)
        # ... then scan the closest open target: a free one on ties, then
        # the lowest index.
        open_dist = tf.where(open_, dist, inf)
        lowest = tf.reduce_min(open_dist, axis=1)
        key = tf.where(
            tf.logical_and(open_, tf.equal(open_dist, lowest[:, None])),
            tf.where(target_to_item < 0, target_ids,
                     target_ids + num_targets),
            2 * num_targets)
        j = tf.math.floormod(tf.reduce_min(key, axis=1), num_targets)
        owner = tf.gather(target_to_item, j, batch_dims=1)
        sink = tf.logical_and(scanning, owner < 0)
        at_j = tf.logical_and(tf.equal(target_ids, j[:, None]), scanning2)
        scanned = tf.logical_or(tf.equal(dist, neg_inf), at_j)
        # Scanned target j: its distance goes into v_j. At a sink, every
        # scanned target's v drops by min_val = lowest (Crouse's update).
        lowest2 = lowest[:, None]
        v = v + tf.where(at_j, lowest2, zero) - tf.where(
            tf.logical_and(scanned, sink[:, None]), lowest2, zero)
        dist = tf.where(at_j, neg_inf, dist)
        cur = tf.where(tf.logical_and(scanning, owner >= 0), owner, cur)
        flip_target = tf.where(sink, j, flip_target)

        # Flip step: one edge of the alternating path per iteration.
        flipping = flip_target >= 0
        flipping2 = flipping[:, None]
        safe_target = tf.maximum(flip_target, 0)
        i = tf.gather(pred, safe_target, batch_dims=1)
        target_to_item = tf.where(
            tf.logical_and(tf.equal(target_ids, flip_target[:, None]),
                           flipping2),
            i[:, None], target_to_item)
        previous = tf.gather(item_to_target, i, batch_dims=1)
        item_to_target = tf.where(
            tf.logical_and(tf.equal(item_ids, i[:, None]), flipping2),
            safe_target[:, None], item_to_target)
        root = tf.gather(roots, tf.minimum(root_index, num_items - 1),
                         batch_dims=1)
        finished = tf.logical_and(flipping, tf.equal(i, root))
        flip_target = tf.where(
            finished, -1, tf.where(flipping, previous, flip_target))

        # Path flipped: a fresh search from the next root.
        root_index = root_index + tf.cast(finished, tf.int32)
        new_root = tf.gather(roots, tf.minimum(root_index, num_items - 1),
                             batch_dims=1)
        cur = tf.where(finished, new_root, cur)
        dist = tf.where(finished[:, None], inf, dist)
        return (v, dist, pred, item_to_target, target_to_item, root_index,
                (row_base + cur)[:, None], flip_target)

    def cond(*state):
        return tf.reduce_any(state[5] < num_roots)

    # A search scans at most num_targets targets and its path has at most
    # num_items edges; the bound is a safeguard, never reached.
    state = tf.while_loop(
        cond, body, state,
        maximum_iterations=num_items * (num_targets + num_items + 1) + 1)
    return state[3], state[4]


_solve_xla = tf.function(_solve, jit_compile=True, autograph=False,
                         reduce_retracing=True)


def _present(valid_columns):
    return () if valid_columns is None else (valid_columns,)


def _compact_width(valid_columns):
    """How many columns an eager call needs to solve, or None for all.

    Eagerly the valid columns can be counted before solving, so a padded
    problem (DETR-style: 128 masks x 181 padded ground-truth columns, 5-60
    of them real) is solved on its valid columns only, as scipy sees it.
    The count is rounded up to a power of two so that varying counts share
    a few compiled shapes.
    """
    if valid_columns is None:
        return None
    num_cols = int(valid_columns.shape[1])
    most = int(np.count_nonzero(valid_columns.numpy(), axis=1).max(
        initial=0))
    width = 1 << max(most - 1, 0).bit_length()
    return width if width < num_cols else None


@functools.lru_cache(maxsize=64)
def _eager_solver(shape, dtype, has_valid_columns, compute_dtype,
                  compact_width=None):
    """The compiled solver for one eager input signature.

    Called eagerly, a tf.function spends about 0.25 ms per call binding and
    looking up its arguments (the Python `None` and dtype among them) before
    any work: more than the whole solve of a loss-sized [8, 128, 10] problem
    (benchmarks/matcher.py). The concrete function of tensor-only arguments,
    kept here per shape, skips that lookup.

    With compact_width, the valid columns (at most compact_width per batch
    element) are gathered to the front of a [batch, rows, compact_width]
    problem, solved, and each row's column is mapped back to its place.
    """
    specs = [tf.TensorSpec(shape, dtype)]
    if has_valid_columns:
        specs.append(tf.TensorSpec([shape[0], shape[2]], tf.bool))

    def solve(cost, valid_columns=None):
        if compact_width is None:
            return _solve(cost, valid_columns, compute_dtype)
        # Valid columns first, in column order; stable, so the columns
        # beyond the valid ones are invalid ones.
        order = tf.argsort(tf.cast(tf.logical_not(valid_columns), tf.int32),
                           axis=1, stable=True)[:, :compact_width]
        compact_col, all_finite = _solve_columns(
            tf.gather(cost, order, axis=2, batch_dims=1),
            tf.gather(valid_columns, order, axis=1, batch_dims=1),
            compute_dtype, valid_first=True)
        col = tf.where(compact_col >= 0,
                       tf.gather(order, tf.maximum(compact_col, 0),
                                 batch_dims=1), -1)
        return tf.one_hot(col, shape[2], dtype=tf.float32), all_finite

    concrete = tf.function(solve, jit_compile=True, autograph=False
                           ).get_concrete_function(*specs)
    # Calling the concrete function binds its arguments to its signature
    # again on every call (0.07 ms of a 0.40 ms call of an [8, 128, 10]
    # problem on an AMD EPYC); the arguments are already the flat tensors
    # of the signature, so they go straight to the compiled function.
    call_flat = getattr(concrete, "_call_flat", None)
    if call_flat is None:  # a TensorFlow without it: the public call
        return concrete
    captured = concrete.captured_inputs
    return lambda *tensors: tuple(call_flat(list(tensors), captured))
