"""Built-in pruners (filled in with the pruner issue)."""
