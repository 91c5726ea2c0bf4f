"""Evaluation of InternVL checkpoints: benchmark loading, prompting, scoring, reports and `mpo eval`."""
