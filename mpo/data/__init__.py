"""Data: image placeholders, MMPR and SFT formats, tiling and augmentation, collators."""
