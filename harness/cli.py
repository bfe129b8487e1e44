"""`hgbench` / `python -m harness`: run suites, list components."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from harness.errors import ConfigError


def _default_out() -> Path:
    return Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _point_latest(out_dir: Path) -> None:
    """reports/latest -> the newest run (a relative symlink, so the folder can move)."""
    latest = out_dir.parent / "latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(out_dir.name, target_is_directory=True)


def _prepare_out(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out_dir}: cannot write there ({e.strerror}); choose another folder") from None


def _check_download_paths(suite, out_dir: Path) -> None:
    """The only file a suite can make hgbench write outside --out is a dataset download; it
    is allowed only into a folder inside the output folder."""
    inside = out_dir.resolve()
    for cell in suite.cells:
        p = cell.workload_params
        if p.get("download") and inside not in Path(p.get("data_root") or ".").resolve().parents:
            raise ConfigError(f"{cell.workload} data_root {p.get('data_root')!r}: download: true would write "
                              f"outside the output folder {out_dir}; give a data_root inside it, or "
                              "download the data by hand and set download: false")


def make_executor(args: argparse.Namespace):
    from harness.executors import EXECUTORS

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


def _run_into(args: argparse.Namespace, suite, out_dir: Path, executor) -> list[dict]:
    """Prepare `out_dir` (refusing foreign or unrequested existing results), run the cells it
    lacks, and return every row."""
    from tqdm import tqdm

    from harness.results import read_curves, read_results, row_key
    from harness.runner import run_cells

    _prepare_out(out_dir)
    existing = read_results(out_dir)
    if existing is not None and not args.resume:
        raise ConfigError(f"--out {out_dir}: already holds results.csv; add --resume to continue "
                          "that run or choose another folder")
    done = [] if existing is None else existing.to_dict("records")
    finished = {row_key(r) for r in done}
    todo = [c for c in suite.cells if c.key() not in finished]
    (out_dir / "suite.yaml").write_text(Path(suite.source).read_text())
    if not args.out:
        _point_latest(out_dir)  # at the start: an interrupted run's rows are found there too
    print(f"hgbench: suite {suite.name!r}: {len(todo)} of {len(suite.cells)} cells to run -> {out_dir}",
          file=sys.stderr)

    bar = tqdm(total=len(todo), unit="cell", file=sys.stderr, disable=args.quiet)

    def progress(row):
        bar.set_postfix_str(f"{row['workload']}/{row['estimator']}: {row['status']}")
        bar.update()
    curves = read_curves(out_dir).to_dict("records") if existing is not None else []
    try:
        return run_cells(todo, out_dir, done=done, isolate=not args.in_process, on_row=progress,
                         done_curves=[c for c in curves if row_key(c) in finished], executor=executor)
    finally:
        bar.close()


def cmd_run(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness.plugins import load_plugins
    from harness.report import DEFAULT_REFERENCE, Reference, load_run, write_report
    from harness.results import summary_frame, to_frame
    from harness.runner import resolve_device
    from harness.suite import find_suite, load_suite

    load_plugins()
    suite = load_suite(find_suite(args.suite), args.set or [])
    resolve_device(suite.settings["device"])
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR: the folder of the run to continue")
    out_dir = Path(args.out) if args.out else _default_out()
    _check_download_paths(suite, out_dir)
    executor = make_executor(args)  # (a bad executor option or Ray address: before any write)
    try:
        rows = _run_into(args, suite, out_dir, executor)
    finally:
        executor.close()

    df = to_frame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40):
        print(summary_frame(df).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    report = write_report(load_run(out_dir), out_dir, Reference.parse(args.reference or DEFAULT_REFERENCE))
    print(f"\nresults: {out_dir / 'results.csv'}  report: {report}")
    failed = int((df["status"] != "ok").sum())
    if failed:
        print(f"hgbench: {failed} of {len(df)} cells did not finish ok (see the error column)",
              file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.frontier import parse_size
    from harness.report import DEFAULT_REFERENCE, Reference, load_run, write_report

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
    import pandas as pd

    from harness.compare import Thresholds, compare, load

    for flag in ("max_slowdown", "max_memory_growth"):
        if not getattr(args, flag) >= 1.0:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be a ratio >= 1 (e.g. 1.10)")
    limits = Thresholds(args.max_slowdown, args.max_memory_growth)
    base, new = load(Path(args.base)), load(Path(args.new))
    table = compare(base, new, limits)
    if table.empty:
        raise ConfigError(f"{args.base} and {args.new} share no cell (same workload, backbone, "
                          "estimator, parameters and seed); nothing to compare")
    shown = table.drop(columns=["params"])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    unmatched = len(new) - len(table)
    if unmatched:
        print(f"hgbench: {unmatched} cell(s) of {args.new} have no match in {args.base}", file=sys.stderr)
    bad = table[table["verdict"] != "ok"]
    if len(bad):
        print(f"hgbench: {len(bad)} of {len(table)} matched cells regressed (limits: time x{limits.max_slowdown}, "
              f"memory x{limits.max_memory_growth}, or newly failing)", file=sys.stderr)
        return 1
    print(f"hgbench: {len(table)} matched cells, no regression", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from estimators import ESTIMATORS
    from harness.plugins import load_plugins
    from harness.suite import SETTINGS, builtin_suites

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
