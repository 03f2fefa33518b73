# Images of docker-compose.yml (see docs/deploy.md):
# - the default stage: every unlearnd process (docker-compose.yml picks the command per service). CPU torch by
#   default; the GPU worker builds it with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
#   (CUDA torch wheels bring their CUDA libraries; the host needs only the NVIDIA driver and container toolkit).
# - `dashboard` (--target dashboard): rq-dashboard, read-only view of the queues.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM python:3.11-slim AS dashboard
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# The same RQ major versions as the project; --json because jobs are serialised as JSON.
RUN pip install "rq-dashboard>=0.9,<1" "rq>=2.0,<4" && useradd --uid 10001 dashboard
USER dashboard
EXPOSE 9181
CMD ["rq-dashboard", "--json", "--bind", "0.0.0.0", "--port", "9181"]

FROM python:3.11-slim
ARG TORCH_INDEX_URL

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    UNLEARND_DATA_DIR=/data \
    UNLEARND_HOST=0.0.0.0

WORKDIR /app
# torch first, from the index chosen above; the project's ranges accept these builds, so `pip install .` keeps them.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.4" "torchvision>=0.19"

COPY pyproject.toml README.md ./
COPY unlearning ./unlearning
COPY models_store ./models_store
COPY workers ./workers
COPY service ./service
COPY unlearnd ./unlearnd
COPY bench ./bench
RUN pip install . && useradd --create-home --uid 10001 unlearnd && mkdir -p /data && chown unlearnd /data

USER unlearnd
# Standalone: the data directory (everything). In docker-compose.yml: caches only, one anonymous volume per container.
VOLUME ["/data"]
EXPOSE 8000
# Standalone: embedded Redis, API, worker and janitor in one container.
CMD ["unlearnd", "run"]
