"""Test support that tests and benches both import; never shipped in the p2med package."""
