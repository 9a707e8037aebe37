"""The pipeline stages: each reads params.yaml, calls the library and writes the stage's outputs."""
