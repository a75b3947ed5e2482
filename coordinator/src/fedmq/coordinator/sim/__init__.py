"""Simulators that stand in for real homes in tests, the demo and benchmarks."""
