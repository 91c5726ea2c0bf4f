"""The recipes, shipped with the package: YAML configs led by the command that launches them.

A recipe is named by a path (``--config my.yaml``) or by its place in this folder, with or without
``recipes/`` and ``.yaml`` (``--config tiny/mpo``); :func:`mpo.recipe.resolve_config` decides which.
"""
