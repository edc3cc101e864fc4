"""Local mirror of the SageMaker container: Flask routes /ping and /invocations behind gunicorn."""
