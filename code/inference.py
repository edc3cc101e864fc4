"""SageMaker entry point: the Hugging Face inference toolkit loads this file from the artifact's code/.

The handler lives in the `taskrouter` library (shipped beside this file), so the
container, the local Flask mirror and the Python library run the same code.
"""
from taskrouter.handler import input_fn, model_fn, output_fn, predict_fn

__all__ = ["model_fn", "input_fn", "predict_fn", "output_fn"]
