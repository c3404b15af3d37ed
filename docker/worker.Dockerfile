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
# The base image already has TensorFlow with CUDA: skip tensorflow-cpu, install the rest.
RUN pip install --no-cache-dir --no-deps . \
 && pip install --no-cache-dir \
      "pydicom>=3.0,<3.1" "pynetdicom>=3.0,<3.1" "pylibjpeg>=2.0,<3" "pylibjpeg-libjpeg>=2.1,<3" \
      "pylibjpeg-openjpeg>=2.3,<3" "pyjpegls>=1.4,<2" "SQLAlchemy>=2.1,<2.2" "alembic>=1.13,<2" \
      "psycopg[binary]>=3.1,<4" "celery[redis]>=5.4,<6" "pydantic>=2.6,<3" \
      "pydantic-settings>=2.3,<3" "tqdm>=4.66,<5" "pillow>=10,<13" "matplotlib>=3.8,<4" \
      "scikit-learn>=1.4,<2" "highdicom>=0.28,<0.29" "prometheus-client>=0.20,<1" \
 && rm -rf /src
RUN useradd --system --uid 10001 --home-dir /var/lib/cxr-triage cxr \
 && mkdir -p /var/lib/cxr-triage && chown cxr /var/lib/cxr-triage
ENV CXR_DATA_DIR=/var/lib/cxr-triage CXR_METRICS_BIND=0.0.0.0 PYTHONUNBUFFERED=1
USER cxr
EXPOSE 9111
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9111/readyz', timeout=4).status != 200)"
ENTRYPOINT ["cxr-triage"]
CMD ["work"]
