"""gunicorn settings for the 2-core machine this project targets; every value can be overridden by env.

One worker holds one model copy (≈1.1 GB in float32 for Gemma 270M) and computes
one micro-batch of concurrent requests at a time (taskrouter/batching.py); its
torch threads default to the cores divided among the workers. Worker threads only wait, so
there are more of them than the admission queue (TASKROUTER_MAX_QUEUE, default 32)
holds: every connection reaches the app, which answers 503 + Retry-After at once
beyond the queue instead of letting requests pile up unseen in gunicorn.
A killed or hung worker (timeout) is replaced by the master; its clients get a
connection error, never a hang. SIGTERM drains in-flight requests for up to
graceful_timeout seconds.
"""
import os

bind = f"0.0.0.0:{os.environ.get('TASKROUTER_PORT', '8080')}"
workers = int(os.environ.get("TASKROUTER_WORKERS", "1"))
threads = int(os.environ.get("TASKROUTER_GUNICORN_THREADS", str(int(os.environ.get("TASKROUTER_MAX_QUEUE", "32")) + 8)))
worker_class = "gthread"
timeout = int(os.environ.get("TASKROUTER_WORKER_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("TASKROUTER_GRACEFUL_TIMEOUT", "30"))
os.environ.setdefault("TASKROUTER_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'
# gunicorn's runtime control socket sits at one shared default path (several servers would clash):
# off unless TASKROUTER_CONTROL_SOCKET names a path for it
control_socket_disable = not os.environ.get("TASKROUTER_CONTROL_SOCKET")
if not control_socket_disable:
    control_socket = os.environ["TASKROUTER_CONTROL_SOCKET"]
