"""Built-in align plugins."""
