"""Input pipelines: tfds data sources, batching, on-device preprocessing and augmentation."""
