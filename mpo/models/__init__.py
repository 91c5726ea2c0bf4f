"""Models: loading native InternVL checkpoints, layout conversion, the embedded tiny model."""
