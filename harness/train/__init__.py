"""Stage 2, training: the shared meta-training loop and what watches it (training curves,
the fidelity probe)."""
