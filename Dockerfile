# CPU image for every unlearnd process; docker-compose.yml picks the command per service.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    UNLEARND_DATA_DIR=/data \
    UNLEARND_HOST=0.0.0.0

WORKDIR /app
# The CPU wheels of torch keep the image small; the project's ranges accept them.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" "torchvision>=0.19"

COPY pyproject.toml README.md ./
COPY unlearning ./unlearning
COPY models_store ./models_store
COPY workers ./workers
COPY service ./service
COPY unlearnd ./unlearnd
COPY bench ./bench
RUN pip install . && useradd --create-home --uid 10001 unlearnd && mkdir -p /data && chown unlearnd /data

USER unlearnd
VOLUME ["/data"]
EXPOSE 8000
# Standalone: embedded Redis, API, worker and janitor in one container.
CMD ["unlearnd", "run"]
