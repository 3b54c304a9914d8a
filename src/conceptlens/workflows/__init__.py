"""Runs that combine the stages: the comparison of methods, FACE's λ sweep, the demo."""
