"""Built-in locators."""
