"""One module per params.yaml section that a stage owns: its frozen dataclass, ranges and cross-section rules."""
