"""Built-in importance (filled in with the pruner issue)."""
