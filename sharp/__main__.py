"""`python -m sharp ...`: the standalone command line."""
from sharp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
