"""Built-in identity plugins."""
