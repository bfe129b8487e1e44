"""`hgbench` / `python -m harness`: run suites, list components."""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from harness.core.errors import ConfigError


def make_executor(args: argparse.Namespace):
    from harness.run.executors import EXECUTORS

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: must be >= 1")
    if args.executor == "ray":
        if args.jobs != 1:
            raise ConfigError("--jobs is for --executor local; Ray places cells by --cpus-per-cell")
        if args.cpus_per_cell < 0:
            raise ConfigError(f"--cpus-per-cell {args.cpus_per_cell}: must be > 0")
        return EXECUTORS.get("ray")(address=args.ray_address, cpus_per_cell=args.cpus_per_cell)
    if args.jobs > 1:
        print(f"hgbench: --jobs {args.jobs}: cells share this machine, so their timings are not "
              "clean; the report flags them (shared_machine_cells)", file=sys.stderr)
    return EXECUTORS.get("local")(jobs=args.jobs)


def _run_into(args: argparse.Namespace, suite, folder, executor) -> None:
    """Run the cells `folder` lacks, handing it each result as the cell finishes."""
    from tqdm import tqdm

    from harness.core.spec import RECORD_FILE
    from harness.run.executors import ExecutorLost
    from harness.run.sweep import sweep

    if folder.rows:  # a resume: the rows there must come from this very suite's settings
        record = folder.path / RECORD_FILE
        recorded = folder.recorded_spec()
        if recorded is None:
            raise ConfigError(f"{record}: missing, so the settings of the rows in {folder.path} are unknown "
                              "(a run of an older hgbench); continue it with that version or choose another --out")
        suite.check_resumes(recorded, str(record))
        suite.check_rows(folder.rows, str(folder.path / "results.csv"))
    todo = folder.pending(suite.cells)
    folder.keep_suite(suite.record(), suite.spec)
    if not args.out:
        folder.point_latest()
    print(f"hgbench: suite {suite.name!r}: {len(todo)} of {len(suite.cells)} cells to run -> {folder.path}",
          file=sys.stderr)
    with tqdm(total=len(todo), unit="cell", file=sys.stderr, disable=args.quiet) as bar:
        try:
            for result in sweep(todo, executor, isolate=not args.in_process):
                folder.add(result)
                bar.set_postfix_str(f"{result.identity['workload']}/{result.identity['estimator']}: {result.status}")
                bar.update()
        except ExecutorLost as e:
            left = folder.pending(todo)
            raise ConfigError(f"{e}; {len(left)} cell(s) have no row ({', '.join(c.label() for c in left[:3])}"
                              f"{', ...' if len(left) > 3 else ''}); results.csv holds every finished cell: "
                              f"run again with --resume --out {folder.path} to continue") from None


def _print_summary(summary_csv: Path) -> None:
    import pandas as pd

    from harness.core.schema import CONSOLE_COLUMNS

    table = pd.read_csv(summary_csv)[CONSOLE_COLUMNS]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))


def cmd_run(args: argparse.Namespace) -> int:
    from harness.core.plugins import load_plugins
    from harness.plan.suite import find_suite, load_suite
    from harness.report.build import write_report
    from harness.report.source import load_run
    from harness.report.tables import DEFAULT_REFERENCE, Reference
    from harness.store.runfolder import RunFolder, check_download_paths, default_out

    load_plugins()
    suite = load_suite(find_suite(args.suite), args.set or [])
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR: the folder of the run to continue")
    reference = Reference.parse(args.reference or DEFAULT_REFERENCE)
    executor = make_executor(args)  # (a bad executor option or Ray address: before any write)
    try:
        executor.admit(list(suite.cells))  # (cells no machine here can run: before any write)
        out_dir = Path(args.out) if args.out else default_out()
        try:
            check_download_paths(suite.cells, out_dir)
        except ConfigError:
            if not args.out:
                out_dir.rmdir()  # (made empty just now by default_out)
            raise
        with RunFolder.open(out_dir, resume=args.resume) as folder:
            _run_into(args, suite, folder, executor)
            report = write_report(load_run(out_dir), out_dir, reference)
            rows = folder.rows
    finally:
        executor.close()
    _print_summary(out_dir / "summary.csv")
    print(f"\nresults: {out_dir / 'results.csv'}  report: {report}")
    failed = sum(r.get("status") != "ok" for r in rows)
    if failed:
        print(f"hgbench: {failed} of {len(rows)} cells did not finish ok (see the error column)",
              file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.core.units import parse_size
    from harness.report.build import write_report
    from harness.report.source import load_run
    from harness.report.tables import DEFAULT_REFERENCE, Reference

    source = Path(args.source)
    reference = Reference.parse(args.reference or DEFAULT_REFERENCE)
    budgets = sorted({parse_size(b, f"--budget {b}") for b in args.budget or []})
    run = load_run(source)
    out = Path(args.output) if args.output else (source if source.is_dir() else source.with_suffix(""))
    try:
        path = write_report(run, out, reference, budgets)
    except OSError as e:
        raise ConfigError(f"-o {out}: cannot write the report there ({e.strerror}); choose another folder") from None
    print(f"report: {path}  summary: {out / 'summary.csv'}  figures: {out / 'figures'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0 only when every cell of BASE was matched and judged (see harness.report.compare)."""
    import pandas as pd

    from harness.report.compare import MISSING, Thresholds, compare, load

    for flag in ("max_slowdown", "max_memory_growth"):
        if not getattr(args, flag) >= 1.0:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be a ratio >= 1 (e.g. 1.10)")
    limits = Thresholds(args.max_slowdown, args.max_memory_growth)
    base, new = load(Path(args.base)), load(Path(args.new))
    table = compare(base, new, limits)
    missing = table[table["verdict"] == MISSING]
    if len(missing) == len(table):
        raise ConfigError(f"{args.base} and {args.new} share no cell (same workload, backbone, "
                          "estimator, parameters and seed); nothing to compare")
    shown = table.drop(columns=["params"])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))
    unmatched = len(new) - (len(table) - len(missing))
    if unmatched:
        print(f"hgbench: {unmatched} cell(s) of {args.new} have no match in {args.base} (not judged)",
              file=sys.stderr)
    bad = table[~table["verdict"].isin(["ok", MISSING])]
    if len(missing):
        print(f"hgbench: {len(missing)} of {len(table)} cells of {args.base} have no row in {args.new} (lost, or "
              "their parameters changed): " + ", ".join(
                  f"{r.workload}/{r.backbone}/{r.estimator}/seed {r.seed}" for r in missing.head(5).itertuples())
              + (" ..." if len(missing) > 5 else ""), file=sys.stderr)
    if len(bad):
        print(f"hgbench: {len(bad)} of {len(table)} cells regressed (limits: time x{limits.max_slowdown}, "
              f"memory x{limits.max_memory_growth}, or newly failing)", file=sys.stderr)
    if len(bad) or len(missing):
        return 1
    print(f"hgbench: all {len(table)} cells of {args.base} matched, no regression", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from estimators import ESTIMATORS
    from harness.core.plugins import load_plugins
    from harness.core.schema import SETTINGS
    from harness.plan.suite import builtin_suites

    load_plugins()
    from workloads import BACKBONES, WORKLOADS

    def params(specs) -> None:
        for p in specs:
            print(f"      {p.describe()}")
    print("workloads:")
    for name, w in WORKLOADS:
        print(f"  {name}: {w.doc}\n    backbones: {', '.join(w.backbones)}\n    params:")
        params(w.params)
    print(f"backbones: {', '.join(BACKBONES.names())}")
    print("estimators:")
    for name, cls in ESTIMATORS:
        print(f"  {name}: {cls.doc}" + ("\n    params:" if cls.params else ""))
        params(cls.params)
    print("suite settings:")
    params(SETTINGS.values())
    print(f"built-in suites: {', '.join(builtin_suites())}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """The estimator contract on every registered estimator (plugins included), or those
    named, each in a process of its own with a time limit: whatever one estimator does
    (exit, crash, hang, leave a thread), the others are still checked and the exit status
    says so. Exit 0 only when every one kept the contract; 1 when any broke it; 2 for an
    unknown name or a broken plugin."""
    from estimators import ESTIMATORS
    from harness.core.plugins import load_plugins
    from harness.run.isolation import Lost, run_isolated
    from harness.train.contract import contract_outcome

    load_plugins()
    if not args.timeout_s > 0:
        raise ConfigError(f"--timeout-s {args.timeout_s}: must be > 0 seconds")
    names = args.estimators or ESTIMATORS.names()
    for name in names:
        ESTIMATORS.get(name, "hgbench check")
    broken = 0
    for name in names:
        outcome = run_isolated(contract_outcome, name, args.timeout_s, what="its check")
        if isinstance(outcome, Lost):
            outcome = f"{name}: {outcome.error}"
        if outcome is None:
            print(f"ok      {name}", flush=True)
        else:
            broken += 1
            print(f"BROKEN  {outcome}", flush=True)
    print(f"hgbench: {len(names) - broken} of {len(names)} estimators keep the contract", file=sys.stderr)
    return 1 if broken else 0


def cmd_paired(args: argparse.Namespace) -> int:
    """Two estimators' hyper-steps timed in one process, in pairs that alternate which runs first."""
    import yaml

    from harness.core.plugins import load_plugins
    from harness.run.paired import paired

    if args.memory:
        from harness.measure.memory import AllocatorMode, rss_probe_unavailable
        if rss_probe_unavailable() or not AllocatorMode.for_live_bytes():  # before any tensor exists
            raise ConfigError("--memory reads live bytes, which needs Linux's /proc and glibc's mallopt; "
                              "run without --memory here")
    load_plugins()
    if args.rounds < 1:
        raise ConfigError(f"--rounds {args.rounds}: must be >= 1")
    try:
        params = yaml.safe_load(args.params)
    except yaml.YAMLError:
        params = None
    if not isinstance(params, dict):
        raise ConfigError(f"--params {args.params!r}: expected a YAML mapping such as '{{width: 16, batch_size: 32}}'")
    for backbone in args.backbone:
        w = {"name": args.workload, "backbone": backbone, "params": params}
        r = paired(w, args.a, args.b, args.rounds, memory=args.memory)
        mem = (f", A {r['a_peak_bytes'] / 2 ** 20:.1f} MiB, B {r['b_peak_bytes'] / 2 ** 20:.1f} MiB, "
               f"A/B memory {r['memory_ratio']:.3f} (hyper-step live-byte peaks)" if args.memory else "")
        print(f"{args.workload} {backbone} {args.params}: A {r['a_ms']:.1f} ms, B {r['b_ms']:.1f} ms, "
              f"A/B time {r['time_ratio']:.3f} (median of {args.rounds} paired rounds; 95% interval "
              f"{r['time_ratio_95'][0]:.3f}-{r['time_ratio_95'][1]:.3f}), "
              f"A/B FLOPs {r['flops_ratio']:.3f}{mem}")
    return 0


def cmd_overhead(args: argparse.Namespace) -> int:
    """The harness's own timing overhead on a hyper-step, against a bare loop."""
    from harness.run.overhead import overhead

    for flag in ("width", "blocks", "steps"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} {getattr(args, flag)}: must be >= 1")
    for est in args.estimators:
        r = overhead(est, args.backbone, args.width, args.blocks, args.steps)
        print(f"{est:10s} {args.backbone} width {args.width}: harness mean {r['harness_hyper_s'] * 1e3:.2f} ms "
              f"(median, as reported: {r['harness_median_s'] * 1e3:.2f} ms), bare loop mean "
              f"{r['bare_hyper_s'] * 1e3:.2f} ms, overhead {r['overhead'] * 100:+.2f}%")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Every cell of a suite predicted under fake tensors (peak memory of a hyper-step and of
    a meta-iteration, time on this CPU), none run; with --against, beside a measured run."""
    import pandas as pd

    from harness.core.plugins import load_plugins
    from harness.core.schema import peak_includes_resident
    from harness.core.units import format_size, parse_size
    from harness.plan.suite import find_suite, load_suite
    from harness.report.predicted import against, error_summary, predicted_frontier
    from harness.run.predict import predict_cells, time_model_class
    from harness.store.runfolder import default_out

    load_plugins()
    suite = load_suite(find_suite(args.suite), args.set or [])
    time_model_class(args.time_model)  # an unknown name fails here, before any folder is made
    budgets = sorted({parse_size(b, f"--budget {b}") for b in args.budget or []}) or list(suite.spec.memory_frontier)
    measured = None
    if args.against:
        from harness.report.source import load_run

        measured = load_run(Path(args.against)).rows
    out = Path(args.out) if args.out else default_out()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror}); choose another folder") from None
    print(f"hgbench predict: suite {suite.name!r}: {len(suite.cells)} cells, for device {args.device} "
          f"(fake tensors; nothing of a step is allocated) -> {out}", file=sys.stderr)
    from harness.run.predict import PREDICTED_COLUMNS
    from harness.store.results import atomic_write

    collected: list = []

    def done(row):
        # predicted.csv is rewritten after every cell: a stopped prediction keeps what it has
        collected.append(row)
        atomic_write(out / "predicted.csv",
                     lambda p: pd.DataFrame(collected, columns=list(PREDICTED_COLUMNS)).to_csv(p, index=False))
        if not args.quiet:
            print(f"  {row['workload']}/{row['backbone']}/{row['estimator']}: {row['status']}", file=sys.stderr,
                  flush=True)

    table = pd.DataFrame(predict_cells(suite.cells, args.device, done, args.time_model),
                         columns=list(PREDICTED_COLUMNS))
    table.to_csv(out / "predicted.csv", index=False)
    shown = table.assign(**{name: table[column].map(_size_or_blank(format_size)) for name, column in (
        ("resident", "predicted_resident_bytes"), ("peak", "predicted_peak_bytes"),
        ("iter_peak", "predicted_iter_peak_bytes"))})
    columns = ["workload", "backbone", "estimator", "resident", "peak", "iter_peak", "predicted_time_s", "status"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(shown[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
    if budgets:
        front = predicted_frontier(table[table["status"] == "ok"], budgets)
        front.to_csv(out / "predicted_frontier.csv", index=False)
        print("\nmemory frontier (predicted hyper-step peaks" + (", what the device holds before the step "
              "included" if peak_includes_resident(args.device) else "") + "):")
        print(front.assign(budget=front["budget_bytes"].map(format_size))[
            ["workload", "variant", "budget", "backbone", "batch_size", "peak_mb"]].to_string(
                index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    if measured is not None:
        joined = against(table, measured)
        joined.to_csv(out / "predicted_vs_measured.csv", index=False)
        summary = error_summary(joined)
        summary.to_csv(out / "prediction_errors.csv", index=False)
        print(f"\nagainst {args.against}: {len(joined)} cells predicted and measured on the same device type")
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))
    from harness.report.html import predicted_page

    (out / "predicted.html").write_text(predicted_page(table, measured, budgets, f"hgbench predict: {suite.name}"),
                                        encoding="utf-8")
    failed = int((table["status"] != "ok").sum())
    if failed:
        print(f"hgbench predict: {failed} of {len(table)} cells could not be predicted (see the error column of "
              f"{out / 'predicted.csv'})", file=sys.stderr)
    return 1 if failed else 0


def _size_or_blank(fmt):
    import math

    return lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt(v)


# `hgbench gpu-check` without CUDA: the gpu-check suite at a size the CPU runs in a minute,
# so CI proves the suite and the command still work (no GPU figure comes of it).
GPU_CHECK_ON_CPU = (
    "device=cpu", "warmup_steps=0", "timed_steps=1", "timeout_s=300", "workloads.1.backbone=[resnet10]",
    *(f"workloads.{i}.params.{k}" for i in (0, 2) for k in ("width=4", "batch_size=16")),
    *(f"workloads.1.params.{k}" for k in ("stem=cifar", "image_size=32", "width=4", "n_shot=1", "n_query=2",
                                          "aux_batch=4")),
    "workloads.2.settings.memory_budget_bytes=1000000",
)


def cmd_gpu_check(args: argparse.Namespace) -> int:
    """On CUDA: the CUDA-only tests, then the gpu-check suite on the GPU, one run folder with
    its report. Without CUDA: the same suite on the CPU at reduced size, said in one line."""
    import subprocess

    import torch

    overrides: list[str] = []
    tests_rc = 0
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        print(f"hgbench gpu-check: CUDA device {name}: the CUDA-only tests, then the gpu-check suite on it",
              file=sys.stderr)
        tests = Path(__file__).resolve().parent.parent / "tests"
        if tests.is_dir():
            tests_rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(tests)],
                                      cwd=tests.parent).returncode
        else:
            print("hgbench gpu-check: no tests/ folder beside this hgbench (an installed copy): CUDA tests skipped",
                  file=sys.stderr)
    else:
        print("hgbench gpu-check: no CUDA device here: running the gpu-check suite on the CPU at reduced size "
              "(width 4, 32 px, LFT at ResNet10 only) to prove the suite and the command; no GPU figure is measured", file=sys.stderr)
        overrides = list(GPU_CHECK_ON_CPU)
    from harness.store.runfolder import default_out

    out = Path(args.out) if args.out else default_out()
    argv = ["run", "gpu-check", "--out", str(out), *(x for o in overrides for x in ("--set", o))]
    argv += ["--quiet"] if args.quiet else []
    argv += ["--in-process"] if args.in_process else []
    if main(argv) == 2:
        return 2
    return _gpu_check_verdict(out, tests_rc)


def _gpu_check_verdict(out: Path, tests_rc: int) -> int:
    """0 when the CUDA tests passed (or none ran), every cell is ok and every cell under a
    memory budget is `oom` (the budget enforced); else 1, each failure named in one line."""
    import pandas as pd

    rows = pd.read_csv(out / "results.csv")
    budget = pd.to_numeric(rows["memory_budget_bytes"], errors="coerce").fillna(0) > 0
    bad = [f"{r.workload}/{r.backbone}/{r.estimator}: {r.status} ({r.error})"
           for r in rows[~budget & (rows["status"] != "ok")].itertuples()]
    bad += [f"{r.workload}/{r.backbone}/{r.estimator} under memory_budget_bytes={int(r.memory_budget_bytes)}: "
            f"{r.status}, not oom (the budget was not enforced)" for r in rows[budget & (rows["status"] != "oom")].itertuples()]
    if tests_rc not in (0, 5):  # (5: pytest collected no CUDA test)
        bad.append(f"the CUDA-only tests failed (pytest exit {tests_rc})")
    for line in bad:
        print(f"hgbench gpu-check: {line}", file=sys.stderr)
    summary = (f"FAILED ({len(bad)} problem(s))" if bad else
               f"ok: {len(rows)} cells, {int(budget.sum())} under a memory budget and oom as expected")
    print(f"hgbench gpu-check: {summary}; run folder and report: {out}", file=sys.stderr)
    return 1 if bad else 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hgbench", description="Benchmark hypergradient estimators.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite (a YAML path or a built-in name such as default)")
    run.add_argument("suite")
    run.add_argument("--out", help="output folder (default: reports/<timestamp>, linked as reports/latest)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a suite value, e.g. train_steps=50 or workloads.0.params.width=8")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out: skip the cells it already has a row for")
    run.add_argument("--in-process", action="store_true",
                     help="debugging: run cells in this process (no isolation, no time limit)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local (default): this machine; ray: each cell a Ray task")
    run.add_argument("--jobs", type=int, default=1,
                     help="local: cells at once (default 1; more shares the machine and is flagged)")
    run.add_argument("--ray-address", default=None,
                     help="ray: the cluster to join (e.g. auto or HOST:6379; default: start a local Ray)")
    run.add_argument("--cpus-per-cell", type=float, default=0.0,
                     help="ray: CPUs each CPU cell reserves (default: as many as this machine has, "
                          "so a node like it times one cell at a time); CUDA cells take one GPU")
    run.add_argument("--reference", default=None, metavar="NAME[:k=v,...]",
                     help="the report's reference estimator for x ref columns (default unroll:T=1)")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="write report.html, summary.csv and figures/ for a run "
                                        "folder or a pytest-benchmark JSON file")
    rep.add_argument("source", help="a run folder (e.g. reports/latest) or a --benchmark-json file")
    rep.add_argument("-o", "--output", help="output folder (default: the run folder; for JSON, "
                                            "the file's name without .json)")
    rep.add_argument("--reference", default=None, metavar="NAME[:k=v,...]",
                     help="reference estimator for the x ref columns (default unroll:T=1)")
    rep.add_argument("--budget", action="append", metavar="SIZE",
                     help="a memory budget of the frontier (e.g. 8GB; repeat for several; "
                          "default: the suite's memory_frontier)")
    rep.set_defaults(func=cmd_report)
    cmp = sub.add_parser("compare", help="compare two runs cell by cell; exit 1 on a regression")
    cmp.add_argument("base")
    cmp.add_argument("new")
    cmp.add_argument("--max-slowdown", type=float, default=1.10,
                     help="fail when a cell's hyper-step time grew by more than this ratio (default 1.10)")
    cmp.add_argument("--max-memory-growth", type=float, default=1.10,
                     help="fail when a cell's peak memory grew by more than this ratio (default 1.10)")
    cmp.set_defaults(func=cmd_compare)
    lst = sub.add_parser("list", help="print workloads, backbones and estimators with their parameters")
    lst.set_defaults(func=cmd_list)
    chk = sub.add_parser("check", help="check the estimator contract (no change to weights, buffers, "
                                       "optimiser state; gradients shaped like the hyperparameters)")
    chk.add_argument("estimators", nargs="*", help="estimators to check (default: every registered one)")
    chk.add_argument("--timeout-s", type=float, default=600.0,
                     help="seconds one estimator's check may take before it is BROKEN (default 600)")
    chk.set_defaults(func=cmd_check)
    par = sub.add_parser("paired", help="time two estimators' hyper-steps in one process, alternating, "
                                        "and print the median time ratio with its 95%% interval (a benchmark)")
    par.add_argument("a", help="estimator A as NAME[:key=value,...], e.g. hyperdistill:unit_direction=true")
    par.add_argument("b", help="estimator B, e.g. t1t2:mode=exact")
    par.add_argument("--workload", default="mwn", help="workload (default mwn)")
    par.add_argument("--backbone", nargs="+", default=["resnet10", "resnet18", "resnet34"],
                     help="backbones, one comparison each (default resnet10 resnet18 resnet34)")
    par.add_argument("--params", default="{width: 16, batch_size: 32}", help="workload parameters (YAML mapping)")
    par.add_argument("--rounds", type=int, default=15, help="paired rounds (default 15)")
    par.add_argument("--memory", action="store_true",
                     help="also read each hyper-step's live-byte peak once, before timing (Linux)")
    par.set_defaults(func=cmd_paired)
    gpu = sub.add_parser("gpu-check", help="on CUDA: the CUDA-only tests and the gpu-check suite on the GPU; "
                                           "without CUDA: the same suite on the CPU at reduced size")
    gpu.add_argument("--out", help="output folder (default: reports/<timestamp>)")
    gpu.add_argument("--quiet", action="store_true", help="no progress bar")
    gpu.add_argument("--in-process", action="store_true", help="debugging: run cells in this process")
    gpu.set_defaults(func=cmd_gpu_check)
    pre = sub.add_parser("predict", help="predict every cell's hyper-step and meta-iteration peak memory and "
                                         "time under fake tensors, running none")
    pre.add_argument("suite")
    pre.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a suite value (as for run)")
    pre.add_argument("--out", help="output folder for predicted.csv (default: reports/<timestamp>)")
    pre.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                     help="the device to predict for (cuda: the caching allocator's 512-byte blocks; "
                          "no GPU needed; time is predicted for the CPU only)")
    pre.add_argument("--time-model", default="roofline", metavar="MODEL",
                     help="how time is predicted on the CPU: roofline (nothing run but its calibration; "
                          "default; 0.29-0.70 of MW-Net hyper-steps timed in the same process) or kernels "
                          "(each distinct kernel call run for real on copies of its inputs and timed, summed; "
                          "0.64-1.36)")
    pre.add_argument("--budget", action="append", metavar="SIZE",
                     help="a memory budget of the predicted frontier (e.g. 24GB; repeat; default: the "
                          "suite's memory_frontier)")
    pre.add_argument("--against", metavar="RUN", help="a run folder of the same cells: print and write the "
                                                      "prediction errors")
    pre.add_argument("--quiet", action="store_true", help="no line per cell")
    pre.set_defaults(func=cmd_predict)
    ovh = sub.add_parser("overhead", help="benchmark the harness's own timing overhead on a hyper-step (MW-Net)")
    ovh.add_argument("--backbone", default="resnet18", help="MW-Net backbone (default resnet18)")
    ovh.add_argument("--width", type=int, default=16, help="first-stage channels (default 16)")
    ovh.add_argument("--estimators", nargs="+", default=["unroll", "evograd"], help="default: unroll evograd")
    ovh.add_argument("--blocks", type=int, default=5, help="alternating blocks (default 5)")
    ovh.add_argument("--steps", type=int, default=10, help="hyper-steps per block (default 10)")
    ovh.set_defaults(func=cmd_overhead)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"hgbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hgbench: interrupted; results.csv holds every finished cell", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"hgbench: error: no space left to write {e.filename or 'a file'}; free some space and run again "
              "(with --resume for a run: results.csv holds every finished cell)", file=sys.stderr)
        return 2
