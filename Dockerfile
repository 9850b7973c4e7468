# The image of the `demo` service in docker-compose.yml: signalbus, installed from this
# checkout, and its demo. docker-compose.yml points it at the compose Redis through
# SIGNALBUS_URL; without that variable the demo would look for a redis-server to start.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package first, so editing the examples does not reinstall the dependencies.
# (pyproject.toml names README.md as the package's readme, so it is needed to build.)
COPY pyproject.toml README.md ./
COPY signalbus ./signalbus
RUN pip install .

COPY examples ./examples

RUN useradd --create-home --uid 10001 demo
USER demo

CMD ["python", "examples/demo.py"]
