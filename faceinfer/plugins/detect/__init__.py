"""Built-in detect plugins."""
