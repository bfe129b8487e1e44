"""Stage 6, reading results: tables, figures, the HTML page, the memory frontier and
`hgbench compare`. Imports no torch, so reports render anywhere pandas does."""
