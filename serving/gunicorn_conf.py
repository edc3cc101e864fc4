"""gunicorn settings for the 2-core machine this project targets; every value can be overridden by env.

One worker holds one model copy (≈1.1 GB in float32 for Gemma 270M); model calls
are serialised inside a worker, so extra threads only overlap request parsing
and I/O with the model call.
"""
import os

bind = f"0.0.0.0:{os.environ.get('TASKROUTER_PORT', '8080')}"
workers = int(os.environ.get("TASKROUTER_WORKERS", "1"))
threads = int(os.environ.get("TASKROUTER_GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("TASKROUTER_WORKER_TIMEOUT", "120"))
graceful_timeout = 30
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'
