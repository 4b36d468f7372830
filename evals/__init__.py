"""Evaluation: suites, the runner, trace scoring and reports."""
