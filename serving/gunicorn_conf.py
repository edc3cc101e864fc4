"""gunicorn settings, all from taskrouter.settings (docs/settings.md): loopback, no starvation, JSON logs.

One worker holds one model copy and computes one micro-batch of concurrent
requests at a time (taskrouter/batching.py). Requests are read whole by the
worker's event loop before a thread takes them (serving/worker.py), so slow
clients hold no thread; there are more threads than admission lets in at once
plus its queue, so every complete request reaches the app, which answers 503 +
Retry-After beyond the queue instead of letting requests pile up unseen. A killed
or hung worker (timeout) is replaced by the master; its clients get a connection
error, never a hang. SIGTERM drains in-flight requests for up to graceful_timeout.
"""
import sys

from taskrouter import settings

try:
    _config = settings.get()
except settings.SettingsError as exc:  # one line, not gunicorn's traceback of its config file
    sys.exit(f"taskrouter: {exc}")

bind = f"{_config.host}:{_config.port}"
workers = _config.workers
worker_class = "taskrouter.serving.worker.BufferingWorker"
threads = _config.server_threads
worker_connections = 4096  # connections a worker holds open, arriving ones included (file descriptors)
timeout = _config.worker_timeout
graceful_timeout = _config.graceful_timeout
loglevel = _config.log_level
logger_class = "taskrouter.serving.logs.GunicornLogger"
accesslog = "-"
# gunicorn's runtime control socket sits at one shared default path (several servers would clash):
# off unless TASKROUTER_CONTROL_SOCKET names a path for it
control_socket_disable = _config.control_socket is None
if not control_socket_disable:
    control_socket = _config.control_socket
