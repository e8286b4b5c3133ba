"""Support code for tests and tools: sample messages of every interface, an echo peer."""
