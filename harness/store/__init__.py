"""Stage 5, the store: results and curves tables and the run folder that holds them.
pandas only: no torch."""
