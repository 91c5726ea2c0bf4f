"""Data: the InternVL2.5 conversation template, MMPR and SFT formats, tiling and augmentation, collators."""
