"""Batch jobs over many images: resumable `batch` (local or S3 storage), Spark batch and face-crop shards.
Needs the `batch` extra."""
