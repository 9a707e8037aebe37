"""The embedded emoji world: concepts, renders, captions (design section 3)."""
