"""sgc: score-based generative classifiers for medical images."""
__version__ = "0.1.0"
