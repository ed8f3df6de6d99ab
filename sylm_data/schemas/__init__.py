"""Data contracts between stages: one module per contract, each versioned.

Column names are spelled once, here; stages import them.
"""
