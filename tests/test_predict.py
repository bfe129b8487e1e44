"""Predictions under fake tensors: exact on allocations of known size, and within 10% of the
live-byte peak a cell's own process measures, for every estimator and every workload."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import types

import pandas as pd
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from harness.measure.memory import rss_probe_unavailable
from harness.measure.predict import FakeAllocations, MeasuredKernels, Roofline, call_key, cuda_footprint, real_copies
from harness.run.cell_process import probe_trainer

needs_rss = pytest.mark.skipif(rss_probe_unavailable() is not None, reason=str(rss_probe_unavailable()))


def test_known_allocations_are_counted_exactly_views_once_and_freed_on_death():
    alloc = FakeAllocations()
    with FakeTensorMode(), alloc:
        a = torch.empty(1000, dtype=torch.float32)              # 4,000 bytes
        b = torch.ones(1000, dtype=torch.float64)               # 8,000 bytes
        view = a[10:20].view(2, 5)                              # no new storage
        assert alloc.current == 12_000
        del a, view                                             # the storage dies with its last view
        c = b * 2                                               # a new 8,000-byte storage
        b.add_(1)                                               # in place: nothing new
        assert (alloc.current, alloc.peak) == (16_000, 16_000)
        alloc.mark()
        d = torch.empty(250, dtype=torch.float32)
        assert alloc.segment_peak == 1_000
        del c, d
    assert alloc.current == 8_000  # b alone


def test_the_cuda_model_rounds_each_storage_up_to_the_allocators_512_byte_blocks():
    alloc = FakeAllocations(cuda_footprint)
    with FakeTensorMode(), alloc:
        keep = [torch.empty(1, dtype=torch.float32), torch.empty(129, dtype=torch.float32),  # 4 B, 516 B
                torch.empty(0)]
        assert alloc.current == 512 + 1024 + 0
    del keep


def test_scalar_reads_have_no_value_to_read_and_are_answered_and_counted():
    alloc = FakeAllocations()
    with FakeTensorMode(), alloc:
        x = torch.ones(3)
        assert float(x.norm()) == 1.0 and bool((x > 0).all())
    assert alloc.scalar_reads == 2


def test_the_time_model_adds_compute_or_traffic_and_a_per_op_overhead():
    r = Roofline(flops_per_s=1e9, cache_bytes_per_s=1e10, dram_bytes_per_s=1e9, overhead_s=1e-6, cache_bytes=100)
    assert r.op_time(2e9, 10) == pytest.approx(2.0 + 1e-6)      # compute-bound
    assert r.op_time(0, 50) == pytest.approx(5e-9 + 1e-6)       # in cache
    assert r.op_time(0, 1000) == pytest.approx(1e-6 + 1e-6)     # from DRAM


def test_time_models_calibrate_under_the_allocator_thresholds_cells_are_timed_with(monkeypatch):
    """Under glibc's starting thresholds the calibration's 1 MiB adds and 8 MiB convolution
    output were fresh mappings, faulted in page by page, some runs and not others (10 or
    92 GB/s in calibrations a second apart); measured cells are timed under the speed
    thresholds. The note then says what the roofline was calibrated to."""
    from harness.measure import memory

    calls = []
    monkeypatch.setattr(memory, "_mallopt", lambda mmap, trim: calls.append((mmap, trim)) or True)
    r = Roofline.calibrate(min_s=0.0)
    assert calls == [(memory.SPEED_MMAP_THRESHOLD, memory.SPEED_TRIM_THRESHOLD)]
    assert f"{r.flops_per_s / 1e9:.0f} GFLOP/s" in r.note and f"{r.overhead_s * 1e6:.1f} us per op" in r.note
    MeasuredKernels.calibrate()
    assert len(calls) == 2 and calls[1] == calls[0] and not memory.AllocatorMode.live_bytes


def test_measured_kernels_time_each_distinct_call_once_and_sum_every_call():
    """Three products of one shape and one of another are two measurements; the segment's
    time is 3 x the first + the second (a repeated ResNet block is timed once)."""
    model = MeasuredKernels(min_repeats=2, max_repeats=2)
    alloc = FakeAllocations(time_model=model)
    with FakeTensorMode(), alloc:
        a, b, c = torch.empty(64, 32), torch.empty(32, 16), torch.empty(32, 8)
        alloc.mark()
        for _ in range(3):
            a @ b
        a @ c
    mm = {k: v for k, v in model.measured.items() if k[0] == "aten.mm.default"}
    assert len(mm) == 2 and all(v > 0 for v in mm.values())
    (t_b,) = [v for k, v in mm.items() if k[2][1] == (32, 16)]
    (t_c,) = [v for k, v in mm.items() if k[2][1] == (32, 8)]
    assert alloc.time_s == pytest.approx(3 * t_b + t_c)


def test_a_timed_call_runs_on_copies_and_leaves_the_random_stream_where_it_was():
    """Timing an op for real must not write to the step's tensors nor draw from its stream."""
    x = torch.ones(4, 3)
    state = torch.get_rng_state()
    model = MeasuredKernels(min_repeats=1, max_repeats=1)
    model.call_time(torch.ops.aten.add_.Tensor, (x, x), {}, [x], [x], x)
    model.call_time(torch.ops.aten.normal_.default, (x,), {}, [x], [x], x)
    assert torch.equal(x, torch.ones(4, 3)) and torch.equal(torch.get_rng_state(), state)
    assert len(model.measured) == 2


def test_real_copies_keep_shape_strides_and_dtype_with_random_floats_and_zero_indices():
    floats, ints = torch.zeros(3, 1).expand(3, 5), torch.full((4,), 7)
    (f, i, scalar), kw = real_copies((floats, ints, 2.5), {"w": torch.zeros(2)}, random_floats=True)
    assert (f.shape, f.stride(), f.dtype) == (floats.shape, floats.stride(), floats.dtype)
    assert f.std() > 0 and f.data_ptr() != floats.data_ptr() and torch.equal(i, torch.zeros(4, dtype=ints.dtype))
    assert scalar == 2.5 and kw["w"].shape == (2,) and torch.equal(ints, torch.full((4,), 7))
    assert call_key(torch.ops.aten.mm.default, (f, f.t()), {}) == call_key(torch.ops.aten.mm.default, (floats, floats.t()), {})


def test_a_cell_predicted_with_measured_kernels_has_a_time_and_says_which_model():
    from harness.plan.suite import build_suite
    from harness.run.predict import predict_cell, time_model_for

    cell = build_suite({"workloads": [{"name": "mwn", "backbone": "resnet10",
                                       "params": {"width": 4, "batch_size": 8, "image_size": 8}}],
                        "estimators": ["unroll"], "train_steps": 0, "warmup_steps": 1}).cells[0]
    model = time_model_for("cpu", "kernels")
    row = predict_cell(cell, "cpu", model)
    assert row["status"] == "ok" and row["predicted_time_s"] > 0 and "kernel call timed once" in row["predicted_note"]
    assert any(k[0] == "aten.convolution_backward.default" for k in model.measured)
    assert time_model_for("cuda", "kernels") is None  # a CPU's kernels say nothing of a GPU's


def test_an_unknown_time_model_is_one_line_naming_the_choices(tmp_path, capsys):
    from harness.cli import main

    rc = main(["predict", "cost", "--time-model", "guess", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'guess'" in err[0] and "kernels, roofline" in err[0]
    assert not (tmp_path / "p").exists()


# Each cell measured as a cell's process measures it (live-bytes mode from the start, the
# hyper-step's peak above what was live before it) and then predicted on a fresh copy.
MEASURE_AND_PREDICT = textwrap.dedent("""
    import json, sys
    from harness.measure.memory import AllocatorMode
    assert AllocatorMode.for_live_bytes()
    import torch
    from harness.measure.passes import _peak
    from harness.measure.predict import FakeAllocations, KernelScratch, cpu_live_footprint, predict_trainer
    from harness.plan.suite import build_suite
    from harness.run.cell_process import probe_trainer
    out = []
    for cell in [c for suite in json.loads(sys.argv[1]) for c in build_suite(suite).cells]:
        trainer = probe_trainer(cell, torch.device("cpu"))
        measured = _peak(trainer.hyper_step, torch.device("cpu"))["delta"]
        real = FakeAllocations(cpu_live_footprint, scratch=KernelScratch())
        with real:  # the same bookkeeping on real tensors and kernels (the next hyper-step)
            trainer.hyper_step()
        del trainer
        predicted = predict_trainer(probe_trainer(cell, torch.device("cpu"), 0), cell.warmup_steps)
        out.append({"cell": cell.label(), "measured": measured, "outputs": real.segment_peak,
                    "predicted": predicted["predicted_peak_bytes"]})
    print(json.dumps(out))
""")

EVERY_ESTIMATOR = ["plain", {"name": "unroll", "params": {"T": 2, "backend": ["func", "mixed"]}},
                   {"name": "t1t2", "params": {"mode": ["exact", "fd"]}}, "evograd", "hyperdistill",
                   {"name": "neumann", "params": {"terms": 2}}, "sama"]
RUN = {"train_steps": 0, "warmup_steps": 1, "timed_steps": 1}
SUITES = [
    {"workloads": [{"name": "mwn", "backbone": "resnet10", "params": {"width": 16, "batch_size": 32, "image_size": 16}}],
     "estimators": EVERY_ESTIMATOR, **RUN},
    # (the rotation's grid sampler has no forward-mode derivative: unroll's func backend only)
    {"workloads": [{"name": "lft", "backbone": "resnet10", "params": {"width": 8, "n_shot": 1, "n_query": 4,
                                                                     "test_episodes": 2, "val_episodes": 2}},
                   {"name": "rotation", "backbone": "lenet", "params": {"batch_size": 64}},
                   {"name": "metaxl", "backbone": "xlmr"}],
     "estimators": ["unroll", "evograd"], **RUN},
]


@needs_rss
def test_predicted_hyper_step_peak_is_within_10_percent_of_the_measured_live_byte_peak():
    """Every estimator on MW-Net, and unroll and EvoGrad on LFT, the rotation and MetaXL
    (toy1d's steps are scalars: no tensor bytes to predict).

    Two references: the live-byte peak, and the same bookkeeping run on the real step (real
    tensors, real kernels, the convolutions' scratch measured the same way), which the fake
    step must equal: ops' outputs are what fake tensors see (within 0.5% on every cell but
    HyperDistill, whose state moves on between the two hyper-steps: 3-6%). Without the convolutions' scratch the
    rotation's LeNet read 31% under the live-byte peak. The live-byte probe itself repeats
    to about 1 MiB at these sizes (the rotation's unroll cell read 12.99 to 14.57 MiB in six
    runs), so a cell is held to 10% or 1 MiB, whichever is larger."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", MEASURE_AND_PREDICT, json.dumps(SUITES)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert len(rows) == 9 + 3 * 2
    for r in rows:
        for reference in ("outputs", "measured"):
            if reference == "measured" and "/sama(" in r["cell"]:
                # The disagreement, kept visible: SAMA's step at this size has 0.9-1.1 MiB of
                # outputs of 64 KiB and more that the live-byte probe never sees resident
                # (EvoGrad's and T1-T2 fd's large outputs match the probe to 0.2 MiB), so the
                # prediction reads 13-15% over it (docs/results/2026-12-04-predict.md).
                assert 0.5 * 2 ** 20 <= r["predicted"] - r[reference] <= 1.5 * 2 ** 20, (reference, r)
                continue
            assert abs(r["predicted"] - r[reference]) <= max(0.10 * r[reference], 2 ** 20), (reference, r)


FIRST_AND_NEXT = textwrap.dedent("""
    import json
    from harness.plan.suite import build_suite
    from harness.run.predict import predict_cell
    cell = build_suite({"workloads": [{"name": "mwn", "backbone": "resnet10",
                                       "params": {"width": 4, "batch_size": 8, "image_size": 8}}],
                        "estimators": ["unroll"], "train_steps": 0, "warmup_steps": 1}).cells[0]
    print(json.dumps([predict_cell(cell, "cpu", None)["predicted_peak_bytes"] for _ in range(2)]))
""")


@needs_rss
def test_the_first_cell_a_process_predicts_reads_as_the_next():
    """A convolution's first call in a process sets up oneDNN's primitives and threads,
    which once read as the first cell's scratch: 7.5 MB predicted for a step the same cell
    predicted next put at 0.48 MB. In a fresh process, the two predictions agree."""
    out = subprocess.run([sys.executable, "-c", FIRST_AND_NEXT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, following = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(first - following) <= 64 * 2 ** 10, (first, following)


def test_predict_writes_one_row_per_cell_with_key_columns_and_a_failed_cell_says_so(tmp_path, monkeypatch):
    """A cell whose prediction raises is a `failed` row with the error and empty numbers,
    and the other cells are still predicted (exit 1)."""
    from harness.cli import main
    from harness.run import predict as run_predict

    real = run_predict.predict_trainer

    def fail_for_evograd(trainer, *a, **k):
        if trainer.estimator.name == "evograd":
            raise NotImplementedError("aten::fancy_op has no fake implementation")
        return real(trainer, *a, **k)

    monkeypatch.setattr(run_predict, "predict_trainer", fail_for_evograd)
    seen = []  # predicted.csv as it stands after each cell: rewritten every time
    real_cell = run_predict.predict_cell

    def watch(cell, *a, **k):
        path = tmp_path / "p" / "predicted.csv"
        seen.append(len(pd.read_csv(path)) if path.exists() else 0)
        return real_cell(cell, *a, **k)

    monkeypatch.setattr(run_predict, "predict_cell", watch)
    suite = tmp_path / "s.yaml"
    suite.write_text("workloads: [{name: mwn, backbone: resnet10, params: {width: 4, batch_size: 8, "
                     "image_size: 8}}]\nestimators: [unroll, evograd]\ntrain_steps: 0\nwarmup_steps: 1\n")
    rc = main(["predict", str(suite), "--out", str(tmp_path / "p"), "--quiet", "--budget", "1GB"])
    assert rc == 1 and seen == [0, 1]
    table = pd.read_csv(tmp_path / "p" / "predicted.csv")
    assert list(table.columns[:8]) == ["workload", "backbone", "estimator", "params", "seed",
                                       "predicted_peak_bytes", "predicted_iter_peak_bytes", "predicted_time_s"]
    ok, failed = table.iloc[0], table.iloc[1]
    assert ok["status"] == "ok" and ok["predicted_peak_bytes"] > 0 and ok["predicted_time_s"] > 0
    assert "time: a roofline calibrated on this CPU" in ok["predicted_note"]  # the default model, named
    assert failed["status"] == "failed" and "fancy_op" in failed["error"]
    assert pd.isna(failed["predicted_peak_bytes"]) and pd.isna(failed["predicted_time_s"])
    page = (tmp_path / "p" / "predicted.html").read_text()
    assert "Predicted (fake tensors, none run)" in page and "fancy_op" in page and "Memory frontier from predictions" in page
    front = pd.read_csv(tmp_path / "p" / "predicted_frontier.csv")
    assert set(front["source"]) == {"predicted"} and list(front["variant"]) == ["unroll"]


@pytest.mark.parametrize("backend", ["mixed-jvp", "mixed-linearize"])
def test_a_backend_the_fake_count_misses_is_refused_not_predicted(backend):
    """torch.func's transforms are not counted as they allocate under fake tensors (measured:
    3-20x off), so their cells are failed rows saying so, never a wrong number."""
    from harness.plan.suite import build_suite
    from harness.run.predict import predict_cell

    cell = build_suite({"workloads": [{"name": "mwn", "backbone": "resnet10",
                                       "params": {"width": 4, "batch_size": 8, "image_size": 8}}],
                        "estimators": [{"name": "unroll", "params": {"T": 2, "backend": backend}}],
                        "train_steps": 0, "warmup_steps": 1}).cells[0]
    row = predict_cell(cell, "cpu", None)
    assert row["status"] == "failed" and f"backend {backend} is not predicted" in row["error"]
    assert row["predicted_peak_bytes"] is None


def test_a_placement_is_a_call_naming_the_device_or_taking_a_placed_tensor_and_a_cpu_copy_is_not():
    from harness.measure.predict import PLACEMENT_DEVICE, DevicePlacements

    host = torch.zeros(10)                                    # made before the build: host-side
    with DevicePlacements() as placed:
        a = host.to(PLACEMENT_DEVICE)                         # placed (a copy, as on a GPU)
        b = (a.float() * 2)[:5]                               # derived from a placed tensor
        c = torch.ones(3, device=PLACEMENT_DEVICE)            # made on the device
        back = a.cpu()                                        # copied off the device
        after = back * 2                                      # host work on the copy
        loose = torch.zeros(10) + host                        # host work during the build
    assert a.data_ptr() != host.data_ptr() and back.data_ptr() != a.data_ptr() and torch.equal(back, a)
    assert all(placed.holds(t) for t in (a, b, c))
    assert not any(placed.holds(t) for t in (host, back, after, loose))
    assert len(placed.storages()) == 3
    del a
    assert len(placed.storages()) == 2                        # a storage leaves when it dies


def reachable_storages(root, host_side=()) -> dict[int, object]:
    """Every tensor storage reachable from `root` through objects, containers and closures
    (never a module's globals), except through the objects in `host_side`."""
    seen, found, stack = {id(h) for h in host_side}, {}, [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, (types.ModuleType, type, types.BuiltinFunctionType)):
            continue
        seen.add(id(o))
        if isinstance(o, types.FunctionType):
            stack.extend(c.cell_contents for c in o.__closure__ or () if c.cell_contents is not None)
            continue
        if isinstance(o, torch.Tensor):
            found[id(o.untyped_storage())] = o.untyped_storage()
            stack.append(o.grad)
        stack.extend(gc.get_referents(o))
    return found


SMALL_MWN = {"name": "mwn", "backbone": "resnet10", "params": {"width": 4, "batch_size": 8, "image_size": 8}}
SMALL_LFT = {"name": "lft", "backbone": "resnet10", "params": {"width": 4, "n_shot": 1, "n_query": 2,
                                                              "test_episodes": 1, "val_episodes": 1}}


@pytest.mark.parametrize("workload, estimator", [(SMALL_MWN, "unroll"), (SMALL_MWN, "hyperdistill"),
                                                 (SMALL_MWN, "sama"), (SMALL_LFT, "unroll")])
def test_what_the_device_holds_before_the_step_is_what_the_trainer_keeps_there(workload, estimator):
    """`predicted_resident_bytes` (the build's placements and what the fake warm-up left)
    against a walk of everything a real trainer, built and warmed up for real, reaches
    (weights, .grad, optimiser and estimator state, data, the last batch), each storage at
    the caching allocator's footprint, less what stays on the host by construction: the
    streams' shuffle orders (drawn by a CPU generator) and LFT's image domains (read a batch
    at a time). Without the resident bytes, a CUDA prediction left out the weights and the
    data that `max_memory_allocated` counts."""
    from harness.plan.suite import build_suite
    from harness.run.predict import predict_cell

    cell = build_suite({"workloads": [workload], "estimators": [estimator], "train_steps": 0,
                        "warmup_steps": 1}).cells[0]
    real = probe_trainer(cell, torch.device("cpu"))
    problem = real.problem
    host = [getattr(problem, "domains", None), *getattr(problem, "domains", {}).values()]
    for stream in (problem.train_stream, problem.val_stream, getattr(problem, "aux_stream", None)):
        host.append(getattr(stream, "_order", None))
    gc.collect()
    expected = sum(cuda_footprint(s.nbytes()) for s in reachable_storages(real, [h for h in host if h is not None])
                   .values() if s.nbytes())
    weights = sum(cuda_footprint(t.untyped_storage().nbytes()) for t in problem.model.parameters())
    del real, problem, host
    row = predict_cell(cell, "cuda", None)
    assert row["status"] == "ok", row["error"]
    assert row["predicted_resident_bytes"] == expected
    assert expected > 2 * weights  # the weights, their gradients, momentum, data: all counted


def test_predictions_are_judged_against_the_same_cells_measured_rows():
    from harness.report.predicted import against, error_summary

    key = {"workload": "mwn", "backbone": "resnet10", "params": '{"estimator": {}, "workload": {}}', "seed": 0}
    predicted = pd.DataFrame([{**key, "estimator": "unroll", "predicted_peak_bytes": 110, "predicted_iter_peak_bytes": 90,
                               "predicted_time_s": 0.5, "status": "ok", "predicted_device": "cpu"},
                              {**key, "estimator": "sama", "predicted_peak_bytes": 50, "predicted_iter_peak_bytes": 50,
                               "predicted_time_s": 1.0, "status": "ok", "predicted_device": "cpu"}])
    measured = pd.DataFrame([{**key, "estimator": "unroll", "status": "ok", "device_type": "cpu",
                              "peak_rss_delta_bytes": 100, "peak_alloc_bytes": None, "iter_peak_bytes": 100,
                              "hyper_time_s": 1.0},
                             {**key, "estimator": "sama", "status": "ok", "device_type": "cuda",  # another device
                              "peak_rss_delta_bytes": None, "peak_alloc_bytes": 50, "iter_peak_bytes": 50,
                              "hyper_time_s": 1.0}])
    plain = {**key, "estimator": "plain", "status": "ok"}
    predicted = pd.concat([predicted, pd.DataFrame([{**plain, "predicted_peak_bytes": 0, "predicted_iter_peak_bytes": 5,
                                                     "predicted_time_s": 0.0, "predicted_device": "cpu"}])], ignore_index=True)
    measured = pd.concat([measured, pd.DataFrame([{**plain, "device_type": "cpu", "peak_rss_delta_bytes": 4096,
                                                   "iter_peak_bytes": 5, "hyper_time_s": 3e-4}])], ignore_index=True)
    joined = against(predicted, measured)
    assert list(joined["variant"]) == ["unroll", "plain"]
    assert pd.isna(joined.iloc[1]["time_ratio"])  # plain's empty hyper-step: predicted to take no time
    joined = joined.iloc[:1]
    r = joined.iloc[0]
    assert (r["peak_error"], r["iter_peak_error"], r["time_ratio"]) == pytest.approx((0.10, -0.10, 0.5))
    s = error_summary(joined).iloc[0]
    assert (s["peak_error_worst"], s["iter_peak_error_median"], s["time_ratio_worst"]) == pytest.approx((0.1, 0.1, 0.5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("workload", [SMALL_MWN, SMALL_LFT])
def test_a_cuda_prediction_against_the_caching_allocator(workload):
    """On a GPU: the predicted resident bytes against `memory_allocated` when the measured
    hyper-step begins, and resident plus the predicted rise against `max_memory_allocated`
    over it. cuDNN's kernels differ from the CPU's whose outputs the fake step counts
    (saved statistics, workspaces through the allocator), hence 10% on the peak."""
    from harness.measure.passes import _peak
    from harness.plan.suite import build_suite
    from harness.run.predict import predict_cell

    cell = build_suite({"workloads": [workload], "estimators": ["unroll"], "train_steps": 0,
                        "warmup_steps": 1, "device": "cuda"}).cells[0]
    device = torch.device("cuda")
    trainer = probe_trainer(cell, device)
    gc.collect()
    resident = torch.cuda.memory_allocated(device)
    measured = _peak(trainer.hyper_step, device)["peak_alloc_bytes"]
    del trainer
    row = predict_cell(cell, "cuda", None)
    assert row["status"] == "ok", row["error"]
    assert abs(row["predicted_resident_bytes"] - resident) <= 0.01 * resident, (row["predicted_resident_bytes"], resident)
    predicted = row["predicted_resident_bytes"] + row["predicted_peak_bytes"]
    assert abs(predicted - measured) <= 0.10 * measured, (predicted, measured)


def test_on_cuda_what_the_device_holds_before_the_step_counts_against_a_budget_and_in_the_errors():
    """CUDA's measured peak is `max_memory_allocated`, everything allocated (the resident
    weights and data included); the CPU's is the rise during the step. A prediction is
    compared and fitted to a budget the same way, and a CUDA prediction without its resident
    figure is no figure, never the rise alone."""
    from harness.report.predicted import against, predicted_frontier

    key = {"workload": "mwn", "backbone": "resnet10", "params": '{"estimator": {}, "workload": {}}', "seed": 0,
           "status": "ok", "n_params": 10, "batch_size": 8}
    gb = 10 ** 9
    predicted = pd.DataFrame([
        {**key, "estimator": "unroll", "predicted_device": "cuda", "predicted_peak_bytes": 0.9 * gb,
         "predicted_resident_bytes": 0.2 * gb, "predicted_iter_peak_bytes": 0.5 * gb, "predicted_time_s": None},
        {**key, "estimator": "evograd", "predicted_device": "cuda", "predicted_peak_bytes": 0.5 * gb,
         "predicted_resident_bytes": None, "predicted_iter_peak_bytes": 0.5 * gb, "predicted_time_s": None},
        {**key, "estimator": "sama", "predicted_device": "cpu", "predicted_peak_bytes": 0.9 * gb,
         "predicted_resident_bytes": 0.2 * gb, "predicted_iter_peak_bytes": 0.5 * gb, "predicted_time_s": None}])
    front = predicted_frontier(predicted, [gb]).set_index("variant")
    assert pd.isna(front.loc["unroll", "backbone"])        # 1.1 GB on the device: does not fit 1 GB
    assert "evograd" not in front.index                     # unknown: never taken to fit
    assert front.loc["sama", "backbone"] == "resnet10"     # the CPU's figure is the rise: 0.9 GB fits
    measured = pd.DataFrame([{**key, "estimator": e, "device_type": d, "peak_alloc_bytes": alloc,
                              "peak_rss_delta_bytes": rss, "iter_peak_bytes": 0.5 * gb, "hyper_time_s": 1.0}
                             for e, d, alloc, rss in (("unroll", "cuda", 1.21 * gb, None),
                                                      ("evograd", "cuda", 0.6 * gb, None),
                                                      ("sama", "cpu", None, 0.9 * gb))])
    joined = against(predicted, measured).set_index("variant")
    assert joined.loc["unroll", "predicted_peak_bytes"] == pytest.approx(1.1 * gb)
    assert joined.loc["unroll", "peak_error"] == pytest.approx(1.1 / 1.21 - 1)
    assert pd.isna(joined.loc["evograd", "peak_error"])
    assert joined.loc["sama", "peak_error"] == pytest.approx(0.0)


def test_the_paper_sizes_suite_asks_every_estimator_at_the_papers_sizes_on_four_gpus():
    from estimators import ESTIMATORS
    from harness.plan.suite import find_suite, load_suite

    suite = load_suite(find_suite("paper-sizes"))
    cells = suite.cells
    builtin = {name for name, cls in ESTIMATORS if cls.__module__.startswith("estimators.")}
    assert {c.estimator for c in cells} == builtin
    assert {c.estimator_params["T"] for c in cells if c.estimator == "unroll"} == {1, 5, 20}
    assert list(suite.spec.memory_frontier) == [12 * 10 ** 9, 24 * 10 ** 9, 40 * 10 ** 9, 80 * 10 ** 9]
    sizes = {(c.workload, c.backbone): c.workload_params for c in cells}
    assert {b for w, b in sizes if w == "lft"} == {"resnet10", "resnet18", "resnet34"}
    assert all(p["image_size"] == 224 and p["width"] == 64 for (w, _), p in sizes.items() if w == "lft")
    assert sizes[("mwn", "resnet32")]["batch_size"] == 100 and sizes[("metaxl", "xlmr-base")]["max_len"] == 128
