"""LSP features: one module per concern, each with a pure core function and a `register(server)`."""
