"""Training: train state, optimizers, losses, pure train / eval steps and the loop."""
