"""Built-in mask plugins."""
