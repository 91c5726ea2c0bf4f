"""Grading: whether a response answers its question (:mod:`mpo.grading.answers`: extraction, matching, the
reasoning check) and whether one model's right answers differ from another's by chance
(:mod:`mpo.grading.statistics`: the exact McNemar test). Used by the pair builders and evaluation alike."""
