"""The training routine and its parts: device and precision, loss and optimizer, the loops,
checkpoints."""
