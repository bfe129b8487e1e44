"""Stage 0, the ground every other part stands on: errors, typed parameters, registries,
plugins, memory sizes and the results schema. Imports nothing of hgbench above it and
nothing heavy (no torch), so estimators, workloads and the report may all use it."""
