"""geep: a reproduction suite for GEEP (Li et al., Frontiers of Computer Science 2024).

Data flows one way: dataset -> tokenizer -> method.train -> checkpoint -> method.predict
-> metrics -> results -> report.
"""

__version__ = "0.1.0"


def _checkout_baselines() -> None:
    """Make the checkout's ``baselines/`` folder importable as ``geep.baselines`` when geep runs
    from a checkout that is not installed (``python -m geep...`` in a copy of it, as on an
    offline GPU machine): installing maps the folder to that name (pyproject.toml's
    package-dir), and without it the methods' modules would not be found."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "baselines"
    init = folder / "__init__.py"
    if importlib.util.find_spec("geep.baselines") is not None or not init.is_file():
        return  # installed (or no checkout beside this package)
    spec = importlib.util.spec_from_file_location(
        "geep.baselines", init, submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["geep.baselines"] = module
    spec.loader.exec_module(module)
    globals()["baselines"] = module  # as an import of a subpackage sets it on its parent


_checkout_baselines()
