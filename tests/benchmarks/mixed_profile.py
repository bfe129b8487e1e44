"""Where the mixed-mode unroll's extra time goes: torch.profiler over hyper-steps of
unroll T=5 by func and by mixed, MW-Net ResNet18 width 16 batch 32, CPU, one process."""
import sys
import torch
from torch.profiler import profile, ProfilerActivity
from harness.plan.suite import build_suite
from harness.run.cell_process import probe_trainer
from harness.run.paired import paired

wl = {"name": "mwn", "backbone": "resnet18", "params": {"width": 16, "batch_size": 32}}
T = int(sys.argv[1]) if len(sys.argv) > 1 else 5
cells = build_suite({"workloads": [wl], "estimators": [{"name": "unroll", "params": {"T": T, "backend": b}}
                     for b in ("func", "mixed")], "train_steps": 0, "warmup_steps": 1}).cells
dev = torch.device("cpu")
res = {}
for c in cells:
    tr = probe_trainer(c, dev)
    for _ in range(2):
        tr.hyper_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            tr.hyper_step()
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    rows = sorted(ka, key=lambda e: -e.self_cpu_time_total)[:14]
    res[c.estimator_params["backend"]] = {e.key: e.self_cpu_time_total / 3e3 for e in ka}
    print(f"== backend {c.estimator_params['backend']}: self CPU total per hyper-step {total / 3e3:.1f} ms")
    for e in rows:
        print(f"  {e.key:45s} {e.self_cpu_time_total / 3e3:8.1f} ms  calls/step {e.count / 3:7.0f}")
f, m = res["func"], res["mixed"]
print("== largest differences mixed - func (ms per hyper-step)")
for k in sorted(set(f) | set(m), key=lambda k: -(m.get(k, 0) - f.get(k, 0)))[:12]:
    print(f"  {k:45s} func {f.get(k, 0):8.1f}  mixed {m.get(k, 0):8.1f}  diff {m.get(k, 0) - f.get(k, 0):+8.1f}")
r = paired(wl, f"unroll:T={T},backend=mixed", f"unroll:T={T},backend=func", rounds=9)
print(f"== paired (9 rounds, alternating): mixed {r['a_ms']:.0f} ms, func {r['b_ms']:.0f} ms, "
      f"ratio {r['time_ratio']:.3f} 95% {r['time_ratio_95']}, FLOPs ratio {r['flops_ratio']:.3f}")
