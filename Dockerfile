# numex web and scheduler image. Build: docker build -t numex .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NUMEX_HOME=/var/lib/numex
WORKDIR /app
COPY pyproject.toml README.md ./
COPY numex ./numex
COPY templates ./templates
COPY migrations ./migrations
COPY experiments ./experiments
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/numex numex \
    && mkdir -p /var/lib/numex && chown numex /var/lib/numex
USER numex
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["sh", "-c", "numex db upgrade && exec gunicorn --workers 4 --bind 0.0.0.0:8000 'numex.web:create_app()'"]
