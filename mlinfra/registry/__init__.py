"""The model registry (names, auto-incremented versions, tags, aliases, lineage,
evaluation metrics) and the content-addressed artifact store it keeps files in."""
