"""Helpers that are not part of fedtwin's public API."""
