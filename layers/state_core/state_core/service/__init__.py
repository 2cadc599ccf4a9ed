"""The state operations: reads, conditional writes and merge patches, over injected collaborators."""
