"""The training engine, with explicit arguments only: the training step, the epoch loops, the
lr finder, loss/optimizer/schedule factories, metrics, device and precision, processes."""
