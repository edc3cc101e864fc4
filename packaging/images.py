"""Hugging Face PyTorch inference DLC image URIs by region (AWS Deep Learning Containers), and what the image holds.

URI: {account}.dkr.ecr.{region}.amazonaws.com[.cn]/huggingface-pytorch-inference:{tag}
The tag is the newest image, PyTorch 2.6 / transformers 5.5.3 / Python 3.12 / CUDA 12.4: the
container-fidelity harness (packaging/harness.py) runs the artifact on exactly these versions.
The older 4.51.3 images cannot run transformers 5 (their toolkit imports transformers.file_utils
names that transformers 5 removed). code/requirements.txt pins the same versions, so the start-up
install adds only what the image lacks, from wheels inside the artifact. Override with
`package deploy --image-uri` for a private image. The accounts are those of AWS's DLC registry
(most regions share 763104351884; opt-in regions have their own).
"""
from __future__ import annotations

REPOSITORY = "huggingface-pytorch-inference"
TAGS = {
    "gpu": "2.6.0-transformers5.5.3-gpu-py312-cu124-ubuntu22.04",
    "cpu": "2.6.0-transformers5.5.3-cpu-py312-ubuntu22.04",
}
# Python packages of that image (its Dockerfiles, aws/deep-learning-containers), as the harness installs them;
# the toolkit is PyPI's 2.6.0 there (the image installs git commit f0c3eb2, not on PyPI: see harness.TOOLKIT_SHIM)
IMAGE_PYTHON = "3.12"
IMAGE_PACKAGES = {
    "transformers": "5.5.3",
    "huggingface_hub": "1.10.0",
    "peft": "0.18.1",
    "accelerate": "1.12.0",
    "multi-model-server": "1.1.11",
    "sagemaker-inference": "1.10.1",
    "sagemaker-huggingface-inference-toolkit": "2.6.0",
    "setuptools": "81.0.0",  # the image asks >=81.0.0; sagemaker-inference imports pkg_resources, gone from 82
}
DEFAULT_ACCOUNT = "763104351884"
ACCOUNTS = {  # regions whose DLC registry is not DEFAULT_ACCOUNT
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-3": "364406365360",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ca-west-1": "204538143572",
    "eu-central-2": "380420809688",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
}
DEFAULT_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1",
                   "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1",
                   "ap-northeast-2", "ap-southeast-1", "ap-southeast-2")


def device_for(instance_type: str) -> str:
    """gpu for ml.g*/ml.p* instances, cpu otherwise (ml.m5, ml.c6i...)."""
    family = instance_type.removeprefix("ml.").split(".")[0]
    return "gpu" if family[:1] in ("g", "p") else "cpu"


def image_uri(region: str, instance_type: str = "ml.g5.xlarge") -> str:
    """The DLC image for `region` and the instance's device; ValueError for a region not in the table."""
    if region in ACCOUNTS:
        account = ACCOUNTS[region]
    elif region in DEFAULT_REGIONS:
        account = DEFAULT_ACCOUNT
    else:
        raise ValueError(f"--region {region}: no Hugging Face DLC image known for it; pass --image-uri")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/{REPOSITORY}:{TAGS[device_for(instance_type)]}"
