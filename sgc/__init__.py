"""sgc: score-based generative classifiers for medical images."""
__version__ = "0.1.0"


def _quiet_tqdm_auto() -> None:
    """Import tqdm.auto once with its "IProgress not found" warning filtered. sgc.train still imports
    tqdm.auto (every other module uses the text bar of sgc.progress); in a Jupyter kernel without
    ipywidgets that import prints a TqdmWarning cell into every rendered notebook. tqdm.auto then
    falls back to the text bar, which is what sgc wants. Remove once sgc.train uses sgc.progress."""
    import importlib
    import warnings
    try:
        from tqdm import TqdmWarning
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        importlib.import_module("tqdm.auto")  # imported, not used: sgc's own bars are sgc.progress


_quiet_tqdm_auto()
