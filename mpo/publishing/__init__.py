"""Publishing: the model card, the Hub upload and the wandb dashboards (docs/design.md#layout).

They reach a trainer through transformers callbacks that the commands attach; the library imports none of them.
"""
