"""Dynamic dataset curation: hierarchical k-means on the model's own features, balanced sampling,
and the keep-list that drives the training stream."""
