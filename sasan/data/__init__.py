"""Data layer: canonical layout, phantom, ingestion adapters, validation, preprocessing."""
