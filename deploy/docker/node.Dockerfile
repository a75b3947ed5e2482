# A fedmq node (numpy trainers; EXTRAS=tflite or sklearn adds those). Build from the repository root:
#   docker build -f deploy/docker/node.Dockerfile --build-arg EXTRAS=tflite -t fedmq-node .
FROM python:3.11-slim
ARG EXTRAS=""
# uid 1883: the eclipse-mosquitto image's user, so 'fedmq broker provision --owner 1883:1883' suits both
RUN useradd --system --uid 1883 --home-dir /var/lib/fedmq --create-home fedmq
COPY shared /src/shared
COPY node /src/node
RUN pip install --no-cache-dir /src/shared "/src/node${EXTRAS:+[$EXTRAS]}" && rm -rf /src
USER fedmq
WORKDIR /var/lib/fedmq
VOLUME ["/config", "/data"]
ENTRYPOINT ["fedmq", "node"]
CMD ["run", "/config/node.yaml"]
