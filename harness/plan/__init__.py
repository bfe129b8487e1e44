"""Stage 1, the plan: suite files expanded into cells, validated before anything runs."""
