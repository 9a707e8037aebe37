"""Concept-erasure methods (DoCo, ESD, CA) as pure training functions over a ModelBundle + LoRA.

Import from the submodules (`cdc.methods.doco`, `cdc.methods.config`, ...): this package imports nothing, so
reading a method's config does not load every method.
"""
