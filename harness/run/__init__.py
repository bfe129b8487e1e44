"""Stage 4, running cells: the cell's own process (build, profile, meta-train) and the sweep
that turns cells into rows, on an executor, each cell isolated."""
