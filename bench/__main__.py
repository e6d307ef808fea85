"""``python -m bench``: the benchmark suite (see ``bench/suite.py`` for what it measures and how)."""

import sys

from bench.suite import main

sys.exit(main())
