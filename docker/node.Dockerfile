# cxr-triage DICOM node: listener + completion/outbox monitor. No TensorFlow in this image.
# Build from the repository root:  docker build -f docker/node.Dockerfile -t cxr-triage-node .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dicom_node ./dicom_node
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
# The node needs no classifier stack: install the package without its dependencies, then only
# what the listener, the database and the broker need.
RUN pip install --no-cache-dir --prefix=/install --no-deps . \
 && pip install --no-cache-dir --prefix=/install \
      "pydicom>=3.0,<3.1" "pynetdicom>=3.0,<3.1" "numpy>=1.26,<3" "pylibjpeg>=2.0,<3" \
      "pylibjpeg-libjpeg>=2.1,<3" "pylibjpeg-openjpeg>=2.3,<3" "pyjpegls>=1.4,<2" \
      "SQLAlchemy>=2.1,<2.2" "alembic>=1.13,<2" "psycopg[binary]>=3.1,<4" "celery[redis]>=5.4,<6" \
      "pydantic>=2.6,<3" "pydantic-settings>=2.3,<3" "tqdm>=4.66,<5" "prometheus-client>=0.20,<1"

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /var/lib/cxr-triage cxr \
 && mkdir -p /var/lib/cxr-triage && chown cxr /var/lib/cxr-triage
COPY --from=build /install /usr/local
ENV CXR_DATA_DIR=/var/lib/cxr-triage CXR_BIND=0.0.0.0 CXR_METRICS_BIND=0.0.0.0 \
    PYTHONUNBUFFERED=1
USER cxr
EXPOSE 11112 9110
VOLUME ["/var/lib/cxr-triage"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9110/readyz', timeout=4).status != 200)"
ENTRYPOINT ["cxr-triage"]
CMD ["listen"]
