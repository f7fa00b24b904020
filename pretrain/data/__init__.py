"""Training data: streaming WebDataset loader, normalisation from the manifest, collation."""
