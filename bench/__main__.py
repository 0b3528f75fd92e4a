"""``python -m bench`` (``just bench``): domed's benchmark suite, outside the tests."""

from __future__ import annotations

import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main())
