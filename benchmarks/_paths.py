"""Where the benchmarks read data and write runs and results.

``../shared/data`` beside the checkout holds the public datasets (read-only, never copied into the repository);
``../runs`` holds training runs and prepared data (machine-local, outside the repository);
``benchmarks/results/records`` holds the committed run records (:mod:`benchmarks.records`) that
``benchmarks/README.md`` is rendered from; ``benchmarks/results/archive`` the superseded results.
"""

import os

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
RUNS = os.path.join(os.path.dirname(REPO), "runs")
RESULTS = os.path.join(BENCHMARKS, "results")
