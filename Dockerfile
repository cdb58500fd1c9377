# The Argus server with its trainer, for docker-compose.yml. (`bentoml build` with
# bentofile.yaml makes the slimmer serving image without torch.)
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BENTOML_DO_NOT_TRACK=true \
    ARGUS_HOME=/data/argus

WORKDIR /app
# torch stays pinned at 2.13.0, from the CPU index (the default index pulls a CUDA build)
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md errors.py ./
COPY argus ./argus
COPY training ./training
COPY models ./models
COPY monitoring ./monitoring
COPY state ./state
COPY service ./service
RUN pip install '.[train]'

EXPOSE 3000
VOLUME ["/data/argus"]
CMD ["argus", "serve", "--host", "0.0.0.0", "--train-if-empty"]
