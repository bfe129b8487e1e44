"""The hyper-step of each estimator, timed by pytest-benchmark; the harness's own memory,
FLOPs and x-plain-step figures ride along in `extra_info`, so `hgbench report` can render
the saved JSON in the same tables and figures as a run."""
from __future__ import annotations

import json

from harness.measure import flops_pass, memory_pass, time_pass
from harness.runner import build_trainer

# Measuring runs at the initial learning rate: a horizon no schedule milestone reaches.
NO_SCHEDULE = 10 ** 9
EXTRA = ("time_x_plain", "plain_time_s", "peak_rss_delta_bytes", "plain_peak_bytes", "mem_x_plain",
         "graph_bytes", "graph_x_plain", "hyper_flops", "plain_flops", "flops_x_plain", "n_params",
         "n_hparams")


def test_hyper_step(benchmark, cell, device):
    trainer = build_trainer(cell, device, NO_SCHEDULE, hyper_every=1)
    trainer.iteration(hyper=True)  # warm-up outside every measurement
    facts = {**time_pass(trainer, device, 3), **memory_pass(trainer, device), **flops_pass(trainer),
             **trainer.problem.describe()}
    benchmark.extra_info.update(
        hgbench=1, workload=cell.workload, backbone=cell.backbone, estimator=cell.estimator,
        params=cell.params_json, seed=cell.seed, device=device.type,
        **{k: facts.get(k) for k in EXTRA})
    benchmark.pedantic(trainer.hyper_step, rounds=5, warmup_rounds=1, iterations=1)
    trainer.check_finite()
    json.dumps(benchmark.extra_info)  # must survive --benchmark-json
