"""One file per stage: a pure batch transform with its config and its rejects."""
