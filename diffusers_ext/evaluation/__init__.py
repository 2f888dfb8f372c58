"""Measurement tools for generated samples."""
