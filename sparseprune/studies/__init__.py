"""The studies behind ``sparseprune demo`` and ``sparseprune bench``: each trains or loads
models, prunes them, and times them side by side with their baselines (numpy, scipy,
scikit-learn, onnxruntime). :mod:`~sparseprune.cli` only parses arguments and prints what
these return; :mod:`~sparseprune.studies.measure` holds the timing method and
:mod:`~sparseprune.studies.report` the tables, JSON and plots."""
