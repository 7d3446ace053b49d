# `nnfp serve` in a container: an index made by `nnfp index build`, mounted at /index, answered
# over HTTP with the model the index names (the packaged one by default, run by LiteRT).
#
#   docker build -t nnfp .
#   docker run --rm -v "$PWD/my_index:/index" -p 8000:8000 nnfp
#
# POST /tracks and DELETE /tracks/ID change the mounted index and need a token; without one
# they are refused (403) and the catalogue is read-only. Pass it in the environment:
#
#   docker run --rm -v "$PWD/my_index:/index" -p 8000:8000 -e NNFP_TOKEN="$(openssl rand -hex 16)" nnfp
#
# (changes are written into the mounted folder by the container's user, root; add
# --user "$(id -u):$(id -g)" to write them as yourself, or mount it `:ro` and give no token).
# Arguments after the image name replace CMD, e.g. `nnfp /index --host 0.0.0.0 --port 8000
# --max-upload-mb 10`; the index is then the first of them.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package is built from (see .dockerignore for the rest of the context):
# libsndfile comes inside the soundfile wheel, faiss-cpu and ai-edge-litert are wheels too.
WORKDIR /opt/nnfp
COPY pyproject.toml README.md ./
COPY configs ./configs
COPY nnfp ./nnfp
RUN pip install ".[serve]"

WORKDIR /
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["nnfp", "serve"]
CMD ["/index", "--host", "0.0.0.0", "--port", "8000"]
