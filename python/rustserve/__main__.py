"""`python -m rustserve ...`: same as the `rustserve` command."""

from rustserve.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
