# harstream: one image for every service of docker-compose.yml (consume, simulate, dashboard, ...).
#
#   docker build -t harstream .
#   docker run --rm harstream harstream --help
#
# torch goes in first, as a CPU build from PyTorch's CPU index: the plain PyPI wheel would pull
# several GB of CUDA libraries that a CPU-only consumer never uses. The version matches the Makefile.
FROM python:3.11-slim

ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "$TORCH" --index-url "$TORCH_INDEX"

WORKDIR /app
# the package only (.dockerignore keeps tests, docs and local state out); dependencies resolve
# against the torch above, which satisfies the package's range, so no second torch is pulled
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY models ./models
COPY simulators ./simulators
COPY dashboard ./dashboard
# the scale extra brings the Redis client for --state-store
RUN pip install ".[scale]" && python -c "import redis, stream.cli"

# not root; /var/lib/harstream is the consumer's --state-dir (a named volume in docker-compose.yml
# takes this directory's owner on first use) and the home for Streamlit's files
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/harstream --create-home harstream
USER harstream
WORKDIR /var/lib/harstream

EXPOSE 8501
CMD ["harstream", "--help"]
