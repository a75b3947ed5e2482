# The fedmq coordinator (root or edge aggregator). Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t fedmq-coordinator .
# EXTRAS=dp,tflite adds differential privacy and TFLite model building (docs/deploy.md).
FROM python:3.11-slim
ARG EXTRAS=""
# uid 1883: the eclipse-mosquitto image's user, so 'fedmq broker provision --owner 1883:1883' suits both
RUN useradd --system --uid 1883 --home-dir /var/lib/fedmq --create-home fedmq \
    && mkdir -p /checkpoints && chown fedmq:fedmq /checkpoints
COPY shared /src/shared
COPY broker /src/broker
COPY node /src/node
COPY coordinator /src/coordinator
RUN pip install --no-cache-dir /src/shared /src/broker /src/node "/src/coordinator${EXTRAS:+[$EXTRAS]}" && rm -rf /src
USER fedmq
WORKDIR /var/lib/fedmq
VOLUME ["/config", "/security", "/checkpoints"]
ENTRYPOINT ["fedmq", "coordinator"]
CMD ["run", "/config/federation.yaml"]
