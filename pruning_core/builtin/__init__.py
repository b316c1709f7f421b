"""Built-in plugins: torch.nn layer handlers, aten op rules, criteria and algorithms.

They register through the same hooks as third-party plugins; see
``pruning_core._plugins.BUILTIN_PLUGINS`` for the list.
"""
