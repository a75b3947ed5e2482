"""Coverage-guided fuzz targets (atheris / libFuzzer) for the envelope decoder, the JSON messages and
the topic-map loader. Run one: python tests/fuzz/atheris_targets.py envelope -runs=100000
Any exception other than the decoder's own rejection error is a finding and stops the fuzzer."""

import sys

import atheris

with atheris.instrument_imports():
    from fedmq.shared.envelope import EnvelopeError, decode
    from fedmq.shared.messages import Control, MessageError, Status
    from fedmq.shared.topicmap import TopicMapError, parse_topic_map


def envelope(data: bytes) -> None:
    try:
        decode(data, max_bytes=1 << 20)
    except EnvelopeError:
        pass


def messages(data: bytes) -> None:
    for decoder in (Control.decode, Status.decode):
        try:
            decoder(data)
        except MessageError:
            pass


def topic_map(data: bytes) -> None:
    try:
        parse_topic_map(data.decode("utf-8", errors="replace"), "fuzz.yaml")
    except TopicMapError:
        pass


TARGETS = {"envelope": envelope, "messages": messages, "topic_map": topic_map}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
