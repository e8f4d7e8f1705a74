"""Operator-facing assembly: a node's supervised actors, and the client commands (submit, tail).

``run.py`` parses the command line and calls into here. This is the one place (besides tests) that wires
actors together; actors themselves never import each other.
"""
