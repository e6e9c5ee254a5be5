"""Vectorized row rules, Great Expectations suites from contracts, quarantine records."""
