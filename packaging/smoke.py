"""Run requests through an unpacked artifact's code/inference.py in this environment, as the local server does.

Started by `package verify` as `python -I smoke.py MODEL_DIR REQUESTS_FILE RESULT_FILE` in a fresh
process: the artifact's code/ comes first on sys.path, so its own taskrouter library is the one
imported, and the installed site-packages supply the dependencies (torch, transformers, peft).
REQUESTS_FILE holds a JSON list of request bodies, sent in order (later ones reuse the prefix cache).
"""
import importlib.util
import json
import sys
import time
from pathlib import Path


def main(model_dir: str, requests_file: str, result_file: str) -> None:
    code = Path(model_dir, "code")
    sys.path.insert(0, str(code))
    spec = importlib.util.spec_from_file_location("inference", code / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    started = time.perf_counter()
    model = inference.model_fn(model_dir)
    timings = {"model_fn_s": round(time.perf_counter() - started, 3), "request_ms": []}
    answers = []
    for request in json.loads(Path(requests_file).read_text()):
        started = time.perf_counter()
        data = inference.input_fn(json.dumps(request), "application/json")
        answers.append(json.loads(inference.output_fn(inference.predict_fn(data, model), "application/json")))
        timings["request_ms"].append(round((time.perf_counter() - started) * 1000, 1))
    import taskrouter

    Path(result_file).write_text(json.dumps({"answers": answers, "timings": timings, "library": taskrouter.__file__}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
