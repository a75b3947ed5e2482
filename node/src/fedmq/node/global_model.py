"""Opening a model message (the global model, or a group's between its edge rounds): decode, check the
federation, verify the signature where the node has keys, and decode the tensors to the spec's shapes."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Dict, Optional, Tuple

from fedmq.shared import codecs
from fedmq.shared.envelope import Envelope, Kind
from fedmq.shared.models import Weights, expected_shapes, spec_from_meta
from fedmq.shared.saved_model import SavedModel, from_envelope
from fedmq.shared.signing import Auth, open_envelope
from fedmq.shared.topicmap import ModelSpec


def open_model(payload: bytes, federation: str, max_bytes: int, auth: Optional[Auth], signers: Tuple[str, ...],
               spec: Optional[ModelSpec] = None
               ) -> Tuple[Envelope, ModelSpec, Dict[str, codecs.Decoded]]:
    """The envelope, its model spec (``spec``, or the one its ``meta.model`` carries) and its tensors;
    a Rejected (EnvelopeError, EnvelopeRefused, SignatureError) or ValueError saying what is wrong."""
    env = open_envelope(payload, federation=federation, kind=Kind.MODEL, max_bytes=max_bytes, auth=auth,
                        signers=signers, fresh=False)
    spec = spec or spec_from_meta(env.meta.get("model"))
    return env, spec, codecs.decode(env.codec, env.codec_params, env.tensors, expected_shapes(spec))


def as_saved(env: Envelope, dense: Weights) -> SavedModel:
    """The model an opened envelope carries, with its tensors dense (``codecs.to_dense``), received now."""
    return from_envelope(replace(env, tensors=dense, codec="raw", codec_params={}), saved_at=time.time())
