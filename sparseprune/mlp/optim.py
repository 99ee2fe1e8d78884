"""Training updates: scikit-learn's Adam and SGD rules with masks (pruned weights stay zero),
and ``_Tie``, the shared values a quantized layer trains."""
from __future__ import annotations

import math

import numpy as np


# ---------------------------------------------------------------------------
# Optimisers (scikit-learn's update rules, with masks)
# ---------------------------------------------------------------------------
class _Adam:
    def __init__(self, params, lr, beta_1, beta_2, epsilon):
        self.lr, self.b1, self.b2, self.eps = lr, beta_1, beta_2, epsilon
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        lr_t = self.lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * (g * g)
            p -= lr_t * m / (np.sqrt(v) + self.eps)

    def apply_masks(self, masks):
        for m, v, mask in zip(self.m[::2], self.v[::2], masks):
            if mask is not None:
                m *= mask
                v *= mask


class _SGD:
    def __init__(self, params, lr, momentum, nesterov):
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.vel = [np.zeros_like(p) for p in params]

    def step(self, params, grads):
        for p, g, vel in zip(params, grads, self.vel):
            vel *= self.momentum
            vel -= self.lr * g
            if self.nesterov:
                p += self.momentum * vel - self.lr * g
            else:
                p += vel

    def apply_masks(self, masks):
        for vel, mask in zip(self.vel[::2], masks):
            if mask is not None:
                vel *= mask




class _Tie:
    """A quantized layer in training: its weights are functions of a few shared values.

    k-means: ``w = codebook[code]``, so dL/dcodebook[c] is the sum of dL/dw over
    the weights with code c (Deep Compression's centroid update); linear:
    ``w = scale[row] * code``, so dL/dscale[r] = sum over row r of code * dL/dw.
    The optimiser steps the shared values; :meth:`write` puts them back into
    the dense training weight.
    """

    def __init__(self, Q, dtype) -> None:
        self.Q = Q
        self.rows = np.repeat(np.arange(Q.shape[0]), np.diff(Q.indptr))
        self.cols = np.asarray(Q.indices)
        self.codes = np.asarray(Q.codes)
        src = Q.codebook if Q.scheme == "kmeans" else Q.scales
        self.shared = np.array(src, dtype=dtype, copy=True)

    def grad(self, gW: np.ndarray) -> np.ndarray:
        g = gW[self.rows, self.cols]
        if self.Q.scheme == "kmeans":
            out = np.bincount(self.codes, weights=g, minlength=self.shared.size)
        else:
            out = np.bincount(self.rows, weights=g * self.codes, minlength=self.shared.size)
        return out.astype(self.shared.dtype)

    def write(self, W: np.ndarray) -> None:
        if self.Q.scheme == "kmeans":
            W[self.rows, self.cols] = self.shared[self.codes]
        else:
            W[self.rows, self.cols] = self.shared[self.rows] * self.codes

    def quantized(self):
        """The layer's QuantizedCSR with the trained shared values (same codes and structure)."""
        if self.Q.scheme == "kmeans":
            return self.Q.with_codebook(self.shared.astype(self.Q.dtype))
        return self.Q.with_scales(self.shared.astype(self.Q.dtype))


