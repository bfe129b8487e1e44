"""The hyper-step of each estimator, timed by pytest-benchmark; the harness's own memory,
FLOPs and x-plain-step figures ride along in `extra_info`, so `hgbench report` can render
the saved JSON in the same tables and figures as a run."""
from __future__ import annotations

import json

from harness.core.schema import BENCH_CARRIED
from harness.measure.passes import profile
from harness.run.cell_process import probe_trainer


def test_hyper_step(benchmark, cell, device):
    trainer = probe_trainer(cell, device, warmup_steps=1)  # warm-up outside every measurement
    facts = {**profile(trainer, device, 3), **cell.identity(), "device": device.type}
    benchmark.extra_info.update(hgbench=1, **{k: facts.get(k) for k in BENCH_CARRIED})
    benchmark.pedantic(trainer.hyper_step, rounds=5, warmup_rounds=1, iterations=1)
    trainer.check_finite()
    json.dumps(benchmark.extra_info)  # must survive --benchmark-json
