"""Benchmarks and synthetic inputs."""
