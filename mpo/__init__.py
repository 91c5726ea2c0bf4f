"""internvl-mpo: Mixed Preference Optimization and three-stage SFT for InternVL2.5."""

__version__ = "0.1.0"
