"""`python -m hblsp`: the language server on stdio (what editors and the tests start)."""

from hblsp.server import main

if __name__ == "__main__":
    raise SystemExit(main())
