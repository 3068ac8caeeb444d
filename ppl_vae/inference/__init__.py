"""Inference: the objectives SVI optimises (Pyro's ELBOs, IWAE, JIT-compiled forms, the
disentangling penalties), KL schedules, checkpoints, and the one SVI loop that every
trainer in the project runs."""
