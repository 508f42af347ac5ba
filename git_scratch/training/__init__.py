"""Training: the loop, its checkpoints, torchrun, the curves, and fresh random checkpoints to start from."""
