"""Numba kernels: raw arrays in, raw arrays out, no validation.

Installed as ``sparseprune.kernels``. Every function here assumes the public
layer (``sparseprune``) has already checked shapes, dtypes, contiguity and index
ranges: kernels are compiled with bounds checks off.
"""
