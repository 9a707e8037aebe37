"""The embedded emoji world: concepts, renders, captions."""
