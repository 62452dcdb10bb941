"""Data assets: a version is the content hash of a file or folder; new content gets
the next version number, the same content keeps its number. Great Expectations
checks and drift live here too."""
