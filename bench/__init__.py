"""Benchmarks: `sh dev.sh bench [NAME...]` (NAME: core, fs). Not part of the tests."""
