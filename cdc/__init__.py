"""Concept erasure in text-to-image diffusion: a thin library behind the numbered notebooks."""
