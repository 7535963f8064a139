"""On-demand benchmarks of mimo_launch (see benchmarks/README.md); not part of the test suite."""
