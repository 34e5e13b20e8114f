"""The training run: the routine top to bottom (routine.py), its phases (setup.py), the recipe,
the records it leaves (records.py) and what lasts as long as it (lifecycle.py). The only layer
that reads `TrainConfig`; everything below takes explicit arguments."""
