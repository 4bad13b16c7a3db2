"""simulforge: training data, trainer and evaluator for simultaneous speech translation."""
__version__ = "0.1.0"
