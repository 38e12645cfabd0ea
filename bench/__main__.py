"""``python -m bench``: run the benchmarks, print the table, write JSON and a PNG chart."""

from bench.run import main

raise SystemExit(main())
