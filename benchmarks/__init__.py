"""Benchmarks: scripts that print a table and write JSON under benchmarks/results/, run from the repository root as
`python -m benchmarks.<name>` (see README.md). `common.py` holds what they share (sizes, the Marian twin, batches,
timing, Multi30k); `fuzz_cases.py` the bad-input strategies and oracles the fuzz tests use too."""
