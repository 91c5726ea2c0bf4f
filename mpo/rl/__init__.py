"""Online RL after MPO: the GSPO stage of InternVL3.5's Cascade RL (``mpo rl``), derived from TRL's GRPOTrainer.

- :mod:`mpo.rl.config`: :class:`~mpo.rl.config.GSPOConfig` (a ``trl.GRPOConfig`` with GSPO's defaults);
- :mod:`mpo.rl.data`: the QA rows a run asks, prompted as the pair builder and evaluation prompt them;
- :mod:`mpo.rl.queries`: query selection by rollout accuracy (from a pair build, or sampled);
- :mod:`mpo.rl.rewards`: rewards from the project's own checker (:mod:`mpo.grading.verdicts`);
- :mod:`mpo.rl.trainer`: :class:`~mpo.rl.trainer.GSPOTrainer`.

docs/design.md#online-rl-gspo states what is computed and why.
"""
