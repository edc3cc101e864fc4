"""The image's entrypoint for `serve` (dockerd-entrypoint.py: sagemaker_huggingface_inference_toolkit.serving.main),
run by the harness in the image's venv, with one deviation: the model server's config file goes to
$TASKROUTER_HARNESS_MMS_CONFIG instead of /etc/sagemaker-mms.properties (shared, and root's, on a host).
"""
import os
import sys

from sagemaker_huggingface_inference_toolkit import mms_model_server, serving
from sagemaker_inference import model_server

if __name__ == "__main__":
    if sys.argv[1:] != ["serve"]:
        sys.exit("usage: container_entry.py serve")
    model_server.MMS_CONFIG_FILE = mms_model_server.MMS_CONFIG_FILE = os.environ["TASKROUTER_HARNESS_MMS_CONFIG"]
    serving.main()
