from harness.cli import main

if __name__ == "__main__":  # spawned cell processes re-import this module: do not run there
    raise SystemExit(main())
