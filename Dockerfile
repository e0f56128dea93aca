# wsproxy: slim Python, a non-root user, `wsproxy serve -c /etc/wsproxy/config.yaml`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/wsproxy
COPY pyproject.toml README.md ./
COPY wsproxy ./wsproxy
RUN pip install . && useradd --system --uid 10001 --no-create-home wsproxy

COPY config.example.yaml /etc/wsproxy/config.yaml

USER wsproxy
EXPOSE 8080 9090
# /healthz on the admin endpoint; the default configuration puts it on 127.0.0.1:9090.
# With another admin address, set WSPROXY_HEALTH_URL (or turn the check off).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["python", "-c", \
    "import os, urllib.request; urllib.request.urlopen(os.environ.get('WSPROXY_HEALTH_URL', 'http://127.0.0.1:9090/healthz'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsproxy"]
CMD ["serve", "-c", "/etc/wsproxy/config.yaml"]
