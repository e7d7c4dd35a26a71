# Service image: `rewards serve` on the embedded defaults, or the production profile via env vars
# (REWARDS_PROFILE=production, REWARDS_REDIS_URL, REWARDS_EVENTS_URL, REWARDS_MLFLOW_TRACKING_URI;
# see compose.yaml). The same image runs the jobs (`rewards train ...`) and `mlflow server`.
# Build: docker build -t rewards-reco .   Run: docker run -p 8000:8000 -v $PWD/data:/app/data rewards-reco
# Not built in CI: no Docker engine runs on the development machines.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY training ./training
COPY serving ./serving
RUN pip install --no-cache-dir --upgrade pip \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    REWARDS_HOME=/app REWARDS_DATA_DIR=/app/data
RUN useradd --create-home --uid 10001 rewards
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY feature_repo ./feature_repo
COPY config ./config
COPY models ./models
# /mlartifacts: the artifact root when this image runs `mlflow server` (compose.yaml)
RUN mkdir -p /app/data /mlartifacts && chown -R rewards:rewards /app /mlartifacts
USER rewards
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
ENTRYPOINT ["rewards"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
