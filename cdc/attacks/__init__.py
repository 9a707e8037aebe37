"""Attacks on erased models: UnlearnDiffAtk-style discrete prefix tokens and the attack success rate."""
