# wsproxy: slim Python, a non-root user, `wsproxy serve -c /etc/wsproxy/config.yaml`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/wsproxy
COPY pyproject.toml README.md ./
COPY wsproxy ./wsproxy
RUN pip install . && useradd --system --uid 10001 --no-create-home wsproxy

COPY config.example.yaml /etc/wsproxy/config.yaml

USER wsproxy
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsproxy"]
CMD ["serve", "-c", "/etc/wsproxy/config.yaml"]
