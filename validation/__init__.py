"""Great Expectations suites of lst-embeddings: thresholds in ``thresholds.py``, suites in ``suites.py``."""
