# The espcam backend: `espcam serve` on a slim Python, as a non-root user, data in /data.
# docker-compose.yml builds and runs it; configuration comes from ESPCAM_* variables.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY sim ./sim
COPY provision ./provision
COPY espcam ./espcam
COPY node ./node
# Extras, comma-separated: `docker compose build --build-arg EXTRAS=s3` for frames in an
# S3-compatible object store (docs/backend.md, "Object storage"). None by default.
ARG EXTRAS=""
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home espcam \
    && mkdir -p /data \
    && chown espcam:espcam /data
ENV ESPCAM_DATA_DIR=/data

USER espcam
VOLUME ["/data"]
# As in docker-compose.yml: the healthcheck logs in as its own user (espcam-health, password in
# HEALTH_MQTT_PASSWORD), never as the backend's: the broker makes user names client ids, and a
# second client with the backend's would disconnect the backend.
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 \
    CMD ESPCAM_USERNAME=espcam-health ESPCAM_PASSWORD="$HEALTH_MQTT_PASSWORD" exec espcam health
CMD ["espcam", "serve"]
