"""Benchmarks and the crash test: commands that print figures, never assertions on time.

Each command prints a readable table and, as its last line, one JSON object
with every figure, so a script can compare runs.
"""
