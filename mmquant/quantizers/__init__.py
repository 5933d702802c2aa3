"""Registered quantizers (typed configs over the core solver)."""
