# Production image: the project, Microsoft ODBC Driver 18 for SQL Server, and Dagster's entry points.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home \
    ACCEPT_EULA=Y

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# unixODBC and Microsoft's ODBC Driver 18 (the driver mssql+pyodbc uses for SQL Server)
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gnupg unixodbc \
    && curl -fsSL https://packages.microsoft.com/keys/microsoft.asc \
       | gpg --dearmor -o /usr/share/keyrings/microsoft-prod.gpg \
    && echo "deb [arch=amd64 signed-by=/usr/share/keyrings/microsoft-prod.gpg] https://packages.microsoft.com/debian/12/prod bookworm main" \
       > /etc/apt/sources.list.d/mssql-release.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends msodbcsql18 \
    && apt-get purge -y --auto-remove curl gnupg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dagster/app

# dependencies first (from the lock file) so code changes do not reinstall them
COPY pyproject.toml uv.lock README.md ./
RUN pip install --no-cache-dir "uv>=0.9" \
    && uv export --frozen --no-dev --no-emit-project --extra postgres --extra mysql -o requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

COPY ingestion_assets ./ingestion_assets
COPY workspace.yaml ./
# the deployment's instance (runs and events in PostgreSQL) and workspace (the user-code server)
COPY deploy/dagster.yaml deploy/workspace.yaml $DAGSTER_HOME/
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 10001 dagster \
    && mkdir -p "$DAGSTER_HOME" \
    && chown -R dagster:dagster "$DAGSTER_HOME" /opt/dagster/app

USER 10001
EXPOSE 3000 4000

# the user-code server by default; the webserver and daemon override the command
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "ingestion_assets.definitions"]
