"""The accelerate training entry point and its parts: arguments, data, models and losses."""
