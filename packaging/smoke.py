"""Run one request through an unpacked artifact's code/inference.py, as the SageMaker container does.

Started by `package verify` as `python -I smoke.py MODEL_DIR REQUEST_FILE RESULT_FILE` in a fresh
process: the artifact's code/ comes first on sys.path, so its own taskrouter library is the one
imported, and the installed site-packages supply the dependencies (torch, transformers, peft).
"""
import importlib.util
import json
import sys
import time
from pathlib import Path


def main(model_dir: str, request_file: str, result_file: str) -> None:
    code = Path(model_dir, "code")
    sys.path.insert(0, str(code))
    spec = importlib.util.spec_from_file_location("inference", code / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    body = Path(request_file).read_bytes()
    started = time.perf_counter()
    model = inference.model_fn(model_dir)
    timings = {"model_fn_s": round(time.perf_counter() - started, 3)}
    answers = []
    for key in ("first_request_ms", "second_request_ms"):  # the second one runs on the warm prefix cache
        started = time.perf_counter()
        data = inference.input_fn(body, "application/json")
        answers.append(inference.output_fn(inference.predict_fn(data, model), "application/json"))
        timings[key] = round((time.perf_counter() - started) * 1000, 1)
    import taskrouter

    Path(result_file).write_text(json.dumps({"answer": json.loads(answers[-1]), "timings": timings,
                                             "library": taskrouter.__file__}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
