"""Built-in objectives."""
