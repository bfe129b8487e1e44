"""Stage 3, measuring one hyper-step: time, memory and FLOPs probes and the passes that use
them."""
