"""Decision-tree kernels: post-pruning passes and compiled traversal.

Raw arrays in, raw arrays out. Trees arrive as scikit-learn's flat node arrays
(``left``, ``right``, ``feature``, ``threshold``, ...) in which every child has
a larger index than its parent (true for scikit-learn's depth-first and
best-first builders; the public layer checks it), so a reverse index loop
visits children before parents.

Compiled-traversal layouts (built by :mod:`sparseprune.tree`):

* compact: nodes renumbered so that siblings are adjacent; ``child[i]`` is the
  left child (the right one is ``child[i] + 1``) or ``-1 - leaf_slot`` for a leaf.
  One step is ``i = child[i] + (x > thr[i])``: no branch on the split outcome.
* padded: a tree of depth ``D`` stored as a complete binary tree in heap order
  (``2**D - 1`` split slots, padding splits send everything left with
  ``thr = +inf``); a row takes exactly ``D`` branch-free steps
  ``i = 2*i + 1 + (x > thr[i])`` and the bottom slot maps to a leaf slot.

Thresholds are float32 rounded *down* from scikit-learn's float64 ones and rows
are cast to float32 on read, so ``x32 > thr32`` equals scikit-learn's
``not (x32 <= thr64)`` for every finite float32 ``x32``.
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
        top = 0
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


def _forest_accumulate(X, pad_depth, node_off, leaf_off, feat, thr, child, leaf_map,
                       values, out, block):
    """Sum every tree's leaf values into ``out`` (n_rows, n_cols), row blocks in parallel.

    ``pad_depth[t] >= 0``: tree ``t`` uses the padded layout of that depth, its
    splits at ``node_off[t]`` and bottom-slot leaf map at ``leaf_off[t]``;
    ``pad_depth[t] < 0``: compact layout rooted at ``node_off[t]``.
    ``values`` holds one row per leaf slot. Trees are the inner loop so a
    tree's nodes stay cached across a block of rows; each block writes only its
    own rows of ``out``.
    """
    n_rows = X.shape[0]
    n_trees = pad_depth.shape[0]
    n_cols = values.shape[1]
    n_blocks = (n_rows + block - 1) // block
    for b in prange(n_blocks):
        r0 = b * block
        r1 = min(r0 + block, n_rows)
        for t in range(n_trees):
            base = node_off[t]
            d = pad_depth[t]
            if d >= 0:
                lbase = leaf_off[t] - ((1 << d) - 1)
                for r in range(r0, r1):
                    i = 0
                    for _ in range(d):
                        f = feat[base + i]
                        i = 2 * i + 1 + (np.float32(X[r, f]) > thr[base + i])
                    slot = leaf_map[lbase + i]
                    for c in range(n_cols):
                        out[r, c] += values[slot, c]
            else:
                for r in range(r0, r1):
                    i = base
                    c0 = child[i]
                    while c0 >= 0:
                        i = c0 + (np.float32(X[r, feat[i]]) > thr[i])
                        c0 = child[i]
                    slot = -1 - c0
                    for c in range(n_cols):
                        out[r, c] += values[slot, c]


forest_accumulate_serial, forest_accumulate = jit_variants(_forest_accumulate, fastmath=False)


def _all_finite(X, block):
    """1 when every entry of ``float32(X)`` is finite (neither NaN nor inf), else 0; row blocks in parallel."""
    n_rows, n_cols = X.shape
    n_blocks = (n_rows + block - 1) // block
    bad = np.zeros(n_blocks, np.uint8)
    for b in prange(n_blocks):
        r0 = b * block
        r1 = min(r0 + block, n_rows)
        acc = np.float32(0.0)
        for r in range(r0, r1):
            for c in range(n_cols):
                # checked after the float32 cast the traversal applies (1e39 becomes inf);
                # v - v is 0 for finite v and NaN for NaN/inf, and NaN sticks in the sum
                v = np.float32(X[r, c])
                acc += v - v
        if acc != 0.0:
            bad[b] = 1
    return 1 - bad.max() if n_blocks > 0 else 1


all_finite_serial, all_finite = jit_variants(_all_finite, fastmath=False)
