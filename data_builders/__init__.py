"""Preference-data construction (generation, correctness, DropoutNTP, filters) and the synthetic visual task."""
