"""Benchmarks: each module runs alone (``python -m bench.<name> [--quick]``); ``make bench`` runs them all
(``bench.run_all``) and writes bench/RESULTS.md."""
