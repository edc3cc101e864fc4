"""taskrouter.packaging (folder `packaging/`): build, verify and deploy the SageMaker model.tar.gz.

The folder sits at the repository root, so `python -m pytest` or `python -c` run from
there put it on sys.path as a top-level `packaging`, which would shadow PyPI's `packaging`
(imported by transformers, pip, setuptools). Imported under that name, it hands over to
the real library found on the rest of sys.path.
"""
import sys as _sys

if __name__ == "packaging":
    from importlib.machinery import PathFinder as _PathFinder
    from importlib.util import module_from_spec as _module_from_spec
    from pathlib import Path as _Path

    _root = _Path(__file__).resolve().parents[1]
    _spec = _PathFinder.find_spec("packaging", [p for p in _sys.path if _Path(p or ".").resolve() != _root])
    if _spec is None:
        raise ModuleNotFoundError("No module named 'packaging' (the PyPI library): pip install packaging",
                                  name="packaging")
    _real = _module_from_spec(_spec)
    _sys.modules["packaging"] = _real  # the import statement returns this module, not the folder
    _spec.loader.exec_module(_real)
