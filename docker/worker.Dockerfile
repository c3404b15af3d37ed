# cxr-triage GPU worker: Celery worker with TensorFlow on CUDA. Needs the NVIDIA container toolkit.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t cxr-triage-worker .
# The base tag must match the TensorFlow range in pyproject.toml (2.16-2.21); check it exists.
FROM tensorflow/tensorflow:2.21.0-gpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dicom_node ./dicom_node
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
# The base image already has TensorFlow with CUDA, and the package's own requirements do not
# name TensorFlow (it is the cpu/gpu extra): a plain install keeps the image's build.
RUN python -c 'import sys, tensorflow as t; v = tuple(int(x) for x in t.__version__.split(".")[:2]); sys.exit(not (2, 16) <= v < (2, 22))' \
 && pip install --no-cache-dir . \
 && rm -rf /src
RUN useradd --system --uid 10001 --home-dir /var/lib/cxr-triage cxr \
 && mkdir -p /var/lib/cxr-triage && chown cxr /var/lib/cxr-triage
# TensorFlow serves the model here, on the GPU: LiteRT (the CPU install's runtime) would not use it.
ENV CXR_DATA_DIR=/var/lib/cxr-triage CXR_METRICS_BIND=0.0.0.0 PYTHONUNBUFFERED=1 \
    CXR_MODEL_RUNTIME=tensorflow
USER cxr
EXPOSE 9111
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9111/readyz', timeout=4).status != 200)"
ENTRYPOINT ["cxr-triage"]
CMD ["work"]
