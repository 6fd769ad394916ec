# syntax=docker/dockerfile:1
# tokenwire: CPU image with the default model (SmolLM2-135M-Instruct) prepared at build time.
#   docker build -t tokenwire .
#   docker run --rm -p 8000:8000 tokenwire
# GPU build (same two settings as the Makefile's TORCH_SPEC / TORCH_INDEX_URL):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t tokenwire:cuda .

# 0. The native CPU kernels (`make native`), compiled in a stage of their own: every x86-64 build
#    (AVX-512, AVX2, plain C), so the image runs on whichever CPU it lands on and carries no compiler.
FROM python:3.11-slim AS kernels
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY app/__init__.py ./app/
COPY app/engine/__init__.py ./app/engine/
COPY app/engine/native ./app/engine/native
RUN python -m app.engine.native.build

FROM python:3.11-slim

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --gid 10001 tokenwire \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin tokenwire
WORKDIR /app

# 1. torch first and on its own (as `make venv` does), so the project's `torch>=2.4` is already met
#    and pip never pulls the default CUDA build. (DL3013: the pin is in TORCH_SPEC, which hadolint can't read.)
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

# 2. The project's dependencies, in a layer that only pyproject.toml and constraints.txt invalidate:
#    installed through an empty stand-in package, which is then removed again. (DL3013: `.` is the
#    project; constraints.txt pins every dependency to the versions the tests passed with.)
COPY pyproject.toml README.md constraints.txt ./
# hadolint ignore=DL3013
RUN mkdir app && touch app/__init__.py \
    && pip install -c constraints.txt '.[gguf]' \
    && pip uninstall --yes tokenwire \
    && rm -rf app build ./*.egg-info

# 3. The project itself, compiled now: PYTHONDONTWRITEBYTECODE would otherwise have every start
#    compile ./app (what `python -m app` runs from /app) again, about 0.4 s.
COPY app ./app
COPY --from=kernels /app/app/engine/native/_compiled ./app/engine/native/_compiled
RUN pip install --no-deps . && rm -rf build ./*.egg-info \
    && python -m compileall -q app \
    && mkdir models data && chown 10001:10001 models data

USER 10001:10001

# 4. The default model, prepared as the user that serves it (the extracted GGUF is not kept), and its
#    weights packed for the native kernels as the first start would (auto dtype and quantization; the
#    pack is the same for every build), so every container maps them instead of packing again.
RUN python -m app.prepare_model --out models/SmolLM2-135M-Instruct --no-keep-gguf \
    && python -m app.engine.native.packed_cache models/SmolLM2-135M-Instruct

# DL3064 reads "TOKEN" in TOKENWIRE_HOST as a secret; it is only the listen address.
# hadolint ignore=DL3064
ENV TOKENWIRE_HOST=0.0.0.0 \
    TOKENWIRE_LOG_FORMAT=json
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TOKENWIRE_PORT', '8000') + '/health', timeout=4)"]
CMD ["python", "-m", "app"]
