"""Decision-tree kernels: post-pruning passes and compiled traversal.

Raw arrays in, raw arrays out. Trees arrive as scikit-learn's flat node arrays
(``left``, ``right``, ``feature``, ``threshold``, ...) in which every child has
a larger index than its parent (true for scikit-learn's depth-first and
best-first builders; the public layer checks it), so a reverse index loop
visits children before parents.

Compiled-traversal layouts (built by :func:`sparseprune.compile_tree`):

* compact: nodes renumbered breadth-first so that siblings are adjacent;
  ``child[i]`` is the left child (the right one is ``child[i] + 1``); a leaf is
  its own child with threshold +inf. One step is ``i = child[i] + (x > thr[i])``:
  no branch on the split outcome.
* padded: a tree's top ``D`` levels stored as a complete binary tree in heap
  order (``2**D - 1`` split slots, padding splits send everything left with
  ``thr = +inf``); a row takes exactly ``D`` branch-free steps
  ``i = 2*i + 1 + (x > thr[i])`` and the bottom slot maps to a leaf slot or,
  for a tree deeper than ``D``, to the compact node where the row continues.

Thresholds are float32 rounded *down* from scikit-learn's float64 ones and rows
are cast to float32 on read, so ``x32 > thr32`` equals scikit-learn's
``not (x32 <= thr64)`` for every finite float32 ``x32``.

Every kernel here is compiled with ``fastmath=False``: the work is comparisons,
integer indexing and float64 sums that must match scikit-learn bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from sparseprune.kernels._jit import jit, jit_variants

_TREE_LEAF = -1
_UNDEFINED = -2


# --------------------------------------------------------------------------- pruning


@jit(fastmath=False)
def ccp_prune(left, right, weighted_n, impurity, ccp_alpha):
    """Minimal cost-complexity pruning, step for step as scikit-learn's ``_cost_complexity_prune``.

    Compiled without fastmath: the floating-point operations run in the same
    order as scikit-learn's so the chosen subtree and the path are bit-identical.

    Returns ``(leaves, path_alphas, path_impurities, path_len)``: ``leaves[i]``
    is 1 when node ``i`` is a leaf of the pruned tree; the path holds the
    effective alphas and total leaf impurities of every pruning step taken.
    """
    n = left.shape[0]
    total = weighted_n[0]
    r_node = np.empty(n, np.float64)
    for i in range(n):
        r_node[i] = weighted_n[i] * impurity[i] / total
    parent = np.full(n, _UNDEFINED, np.int64)
    leaves = np.zeros(n, np.uint8)
    for i in range(n):
        if left[i] == _TREE_LEAF:
            leaves[i] = 1
        else:
            parent[left[i]] = i
            parent[right[i]] = i
    n_leaves = np.zeros(n, np.int64)
    r_branch = np.zeros(n, np.float64)
    for leaf in range(n):
        if not leaves[leaf]:
            continue
        r_branch[leaf] = r_node[leaf]
        cur = r_node[leaf]
        j = leaf
        while j != 0:
            p = parent[j]
            r_branch[p] += cur
            n_leaves[p] += 1
            j = p
    candidate = np.zeros(n, np.uint8)
    for i in range(n):
        candidate[i] = 1 - leaves[i]
    in_subtree = np.ones(n, np.uint8)
    path_alphas = np.zeros(n + 1, np.float64)
    path_imp = np.zeros(n + 1, np.float64)
    path_alphas[0] = 0.0
    path_imp[0] = r_branch[0]
    count = 1
    stack = np.empty(n, np.int64)
    max_float = np.finfo(np.float64).max
    while candidate[0]:
        effective = max_float
        best = 0
        for i in range(n):
            if not candidate[i]:
                continue
            a = (r_node[i] - r_branch[i]) / (n_leaves[i] - 1)
            if a < effective:
                effective = a
                best = i
        if ccp_alpha < effective:
            break
        stack[0] = best
        top = 1
        while top > 0:
            top -= 1
            j = stack[top]
            if not in_subtree[j]:
                continue
            candidate[j] = 0
            leaves[j] = 0
            in_subtree[j] = 0
            if left[j] != _TREE_LEAF:
                stack[top] = left[j]
                stack[top + 1] = right[j]
                top += 2
        leaves[best] = 1
        in_subtree[best] = 1
        n_pruned = n_leaves[best] - 1
        n_leaves[best] = 0
        r_diff = r_node[best] - r_branch[best]
        r_branch[best] = r_node[best]
        j = parent[best]
        while j != _UNDEFINED:
            n_leaves[j] -= n_pruned
            r_branch[j] += r_diff
            j = parent[j]
        path_alphas[count] = effective
        path_imp[count] = r_branch[0]
        count += 1
    return leaves, path_alphas, path_imp, count


@jit(fastmath=False)
def collapse_where(left, right, allowed):
    """Bottom-up: node ``i`` becomes a leaf when ``allowed[i]`` and both children are leaves.

    Returns the leaf mask of the pruned tree (original leaves included).
    """
    n = left.shape[0]
    leaf = np.zeros(n, np.uint8)
    for i in range(n - 1, -1, -1):
        if left[i] == _TREE_LEAF:
            leaf[i] = 1
        elif allowed[i] and leaf[left[i]] and leaf[right[i]]:
            leaf[i] = 1
    return leaf


@jit(fastmath=False)
def collapse_by_cost(left, right, leaf_cost, tol):
    """Bottom-up: node ``i`` becomes a leaf when its cost as a leaf is at most its subtree's cost + ``tol``.

    ``leaf_cost[i]`` is the error node ``i`` would make as a leaf; a subtree's
    cost is the sum over its (already pruned) leaves. Returns the leaf mask.
    """
    n = left.shape[0]
    leaf = np.zeros(n, np.uint8)
    sub = np.empty(n, np.float64)
    for i in range(n - 1, -1, -1):
        if left[i] == _TREE_LEAF:
            leaf[i] = 1
            sub[i] = leaf_cost[i]
        else:
            s = sub[left[i]] + sub[right[i]]
            if leaf_cost[i] <= s + tol:
                leaf[i] = 1
                sub[i] = leaf_cost[i]
            else:
                sub[i] = s
    return leaf


@jit(fastmath=False)
def preorder_keep(left, right, leaf):
    """Depth-first preorder (left before right) of the pruned tree, as scikit-learn's ``_build_pruned_tree``.

    Returns ``(old_id, new_left, new_right, depth)`` over the kept nodes:
    ``old_id[k]`` is the original index of new node ``k``.
    """
    n = left.shape[0]
    old_id = np.empty(n, np.int64)
    new_left = np.full(n, _TREE_LEAF, np.int64)
    new_right = np.full(n, _TREE_LEAF, np.int64)
    depth = np.zeros(n, np.int64)
    st_node = np.empty(n + 1, np.int64)
    st_parent = np.empty(n + 1, np.int64)
    st_isleft = np.empty(n + 1, np.uint8)
    st_depth = np.empty(n + 1, np.int64)
    top = 1
    st_node[0] = 0
    st_parent[0] = -1
    st_isleft[0] = 0
    st_depth[0] = 0
    k = 0
    while top > 0:
        top -= 1
        o = st_node[top]
        p = st_parent[top]
        old_id[k] = o
        depth[k] = st_depth[top]
        if p >= 0:
            if st_isleft[top]:
                new_left[p] = k
            else:
                new_right[p] = k
        if not leaf[o]:
            st_node[top] = right[o]
            st_parent[top] = k
            st_isleft[top] = 0
            st_depth[top] = depth[k] + 1
            st_node[top + 1] = left[o]
            st_parent[top + 1] = k
            st_isleft[top + 1] = 1
            st_depth[top + 1] = depth[k] + 1
            top += 2
        k += 1
    return old_id[:k].copy(), new_left[:k].copy(), new_right[:k].copy(), depth[:k].copy()


# --------------------------------------------------------------------------- inference

# Rows traversed in lockstep inside a block: independent dependency chains the
# CPU overlaps, instead of one row's chain of dependent loads at a time.
GROUP = 8
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)


def _forest_accumulate(X, hybrid, top_depth, top_off, map_off, pad_u, pad_f, nodes_u, nodes_f, leaf_map,
                       values, out, slots, block):
    """Sum every tree's leaf values into ``out`` (n_rows, n_cols), row blocks in parallel.

    With a non-empty ``slots`` (one tree only) the kernel writes each row's
    leaf slot there instead and leaves ``out`` alone: a single tree's
    prediction is a row of ``values``, no sum needed.

    Returns 1 when every entry of ``float32(X)`` was finite, else 0 (``out`` is
    then meaningless). Each block is checked right before its traversal, so
    the traversal finds the block's rows in cache; rows are read in X's own
    dtype and cast to float32 per comparison, with no converted copy of X.

    Every tree starts with a padded complete tree of ``top_depth[t]`` levels
    (rows ``top_off[t]...`` of ``pad_u``/``pad_f``, uint32/float32 views of one
    (n, 2) buffer: feature, threshold), walked by GROUP rows in lockstep with
    no branch at all; its bottom slot ``s`` gives ``leaf_map[map_off[t] + s]``:
    a value slot when the whole tree fits (``hybrid[t] == 0``), otherwise the
    node of the compact layout (rows of ``nodes_u``/``nodes_f``: feature,
    threshold, left child with the right one next to it, leaf slot) where the
    row continues. Below the padded top, GROUP lanes walk the compact nodes; a
    leaf is its own child with threshold +inf, so a row has finished when a
    step leaves it in place, and its lane takes the next row.

    Trees are the inner loop so a tree's hot nodes stay cached across a block
    of rows; each block writes only its own rows of ``out``. Unsigned indices:
    numba adds no negative-index wraparound code for them.
    """
    n_rows, n_feat = X.shape
    n_trees = top_depth.shape[0]
    n_cols = values.shape[1]
    leaf_only = slots.shape[0] > 0
    n_blocks = (n_rows + block - 1) // block
    bad = np.zeros(max(n_blocks, 1), np.uint8)
    for b in prange(n_blocks):
        r0 = b * block
        nr = min(block, n_rows - r0)
        xb = X[r0:r0 + nr]
        nonfinite = False
        for r in range(nr):
            for c in range(n_feat):
                v = np.float32(xb[r, c])
                # v - v is 0 for finite v, NaN for NaN/inf; an OR (unlike a float sum) vectorises
                nonfinite |= not (v - v == 0.0)
        if nonfinite:
            bad[b] = 1
            continue
        uidx = np.zeros(GROUP, np.uint64)
        lane_row = np.zeros(GROUP, np.int64)
        start = np.zeros(nr, np.uint64)
        for t in range(n_trees):
            d = top_depth[t]
            ubase = np.uint64(top_off[t])
            lb = map_off[t] - ((1 << d) - 1)
            for g0 in range(0, nr, GROUP):
                gn = min(GROUP, nr - g0)
                for j in range(gn):
                    uidx[j] = _U0
                for _ in range(d):
                    for j in range(gn):
                        i = uidx[j]
                        k = ubase + i
                        row = np.uint64(g0 + j)
                        uidx[j] = _U2 * i + _U1 + np.uint64(np.float32(xb[row, pad_u[k, _U0]]) > pad_f[k, _U1])
                if hybrid[t]:
                    for j in range(gn):
                        start[g0 + j] = np.uint64(leaf_map[lb + np.int64(uidx[j])])
                elif leaf_only:
                    for j in range(gn):
                        slots[r0 + g0 + j] = leaf_map[lb + np.int64(uidx[j])]
                else:
                    for j in range(gn):
                        slot = leaf_map[lb + np.int64(uidx[j])]
                        for c in range(n_cols):
                            out[r0 + g0 + j, c] += values[slot, c]
            if not hybrid[t]:
                continue
            next_r = 0
            active = 0
            for j in range(GROUP):
                if next_r < nr:
                    lane_row[j] = next_r
                    uidx[j] = start[next_r]
                    next_r += 1
                    active += 1
                else:
                    lane_row[j] = -1
            while active > 0:
                for j in range(GROUP):
                    r = lane_row[j]
                    if r < 0:
                        continue
                    i = uidx[j]
                    x = np.float32(xb[np.uint64(r), nodes_u[i, _U0]])
                    nxt = np.uint64(nodes_u[i, _U2]) + np.uint64(x > nodes_f[i, _U1])
                    if nxt != i:
                        uidx[j] = nxt
                        continue
                    slot = nodes_u[i, _U3]
                    if leaf_only:
                        slots[r0 + r] = slot
                    else:
                        for c in range(n_cols):
                            out[r0 + r, c] += values[slot, c]
                    if next_r < nr:
                        lane_row[j] = next_r
                        uidx[j] = start[next_r]
                        next_r += 1
                    else:
                        lane_row[j] = -1
                        active -= 1
    return 1 - bad.max()


forest_accumulate_serial, forest_accumulate_parallel = jit_variants(_forest_accumulate, fastmath=False)


# --------------------------------------------------------------------------- layout builders


@jit(fastmath=False)
def fill_padded(left, right, feature, thr32, target, depth, nodes_i, nodes_f, leaf_map):
    """Write the top ``depth`` levels of one tree as a complete binary tree in heap order.

    ``nodes_i``/``nodes_f`` (int32/float32 views of ``2**depth - 1`` packed
    (feature, threshold) rows) must arrive with feature 0 and threshold +inf
    in every row: padding splits send every finite row left. A leaf above the
    bottom level, or a node at the bottom level, writes ``target[node]`` into
    ``leaf_map`` (``2**depth`` slots) at the bottom slot its left spine ends in.
    """
    n = left.shape[0]
    pos = np.zeros(n, np.int64)
    level = np.zeros(n, np.int64)
    first_bottom = (1 << depth) - 1
    for i in range(n):
        internal = left[i] != _TREE_LEAF
        if internal:
            level[left[i]] = level[i] + 1
            level[right[i]] = level[i] + 1
        if level[i] > depth:
            continue
        p = pos[i]
        if not internal or level[i] == depth:
            for _ in range(depth - level[i]):
                p = 2 * p + 1
            leaf_map[p - first_bottom] = target[i]
        else:
            nodes_i[p, 0] = feature[i]
            nodes_f[p, 1] = thr32[i]
            pos[left[i]] = 2 * p + 1
            pos[right[i]] = 2 * p + 2


@jit(fastmath=False)
def fill_compact(left, right, feature, thr32, leaf_slot, base, nodes_i, nodes_f):
    """Write one tree into the compact layout at ``base``: breadth-first, siblings adjacent.

    Node ``k`` of the tree goes to row ``base + k`` of the packed buffer
    (``nodes_i``/``nodes_f`` are int32/float32 views of it): feature,
    threshold, global index of the left child (the right one follows it) and,
    for a leaf, its value slot. A leaf is its own child with threshold +inf.
    Returns the global row of every original node.
    """
    n = left.shape[0]
    queue = np.empty(n, np.int64)
    where = np.empty(n, np.int64)
    queue[0] = 0
    n_assigned = 1
    for k in range(n):
        o = queue[k]
        where[o] = base + k
        if left[o] == _TREE_LEAF:
            nodes_i[base + k, 0] = 0
            nodes_f[base + k, 1] = np.inf
            nodes_i[base + k, 2] = base + k
            nodes_i[base + k, 3] = leaf_slot[o]
        else:
            nodes_i[base + k, 0] = feature[o]
            nodes_f[base + k, 1] = thr32[o]
            nodes_i[base + k, 2] = base + n_assigned
            nodes_i[base + k, 3] = -1
            queue[n_assigned] = left[o]
            queue[n_assigned + 1] = right[o]
            n_assigned += 2
    return where
