"""Built-in layer handlers for torch.nn, one module per layer family."""
