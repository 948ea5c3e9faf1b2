"""Simulated TT runners: real timing shape, real outputs, deterministic, with fault injection."""
