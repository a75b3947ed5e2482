# The fedmq coordinator (root or edge aggregator). Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t fedmq-coordinator .
FROM python:3.11-slim
RUN useradd --system --home-dir /var/lib/fedmq --create-home fedmq
COPY shared /src/shared
COPY broker /src/broker
COPY coordinator /src/coordinator
RUN pip install --no-cache-dir /src/shared /src/broker /src/coordinator && rm -rf /src
USER fedmq
WORKDIR /var/lib/fedmq
VOLUME ["/config", "/security", "/checkpoints"]
ENTRYPOINT ["fedmq", "coordinator"]
CMD ["run", "/config/federation.yaml"]
