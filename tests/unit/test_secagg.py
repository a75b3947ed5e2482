"""Secure aggregation's building blocks: field encoding, Shamir sharing, masks that cancel, dropouts,
and the validation of its messages."""

import numpy as np
import pytest

from fedmq.shared.messages import MessageError
from fedmq.shared.secagg import crypto, field, masks, shamir
from fedmq.shared.secagg.messages import SecAggMessage


def test_fixed_point_encoding_is_unbiased_and_signed():
    rng = np.random.default_rng(0)
    values = np.array([-1.5, 0.0, 2.25, 1e-7])
    decoded = np.mean([field.decode(field.encode(values, 10, rng), 10) for _ in range(2000)], axis=0)
    assert np.allclose(decoded, values, atol=2e-4)
    with pytest.raises(ValueError):
        field.encode(np.array([2.0 ** 40]), 20, rng)  # too large for sums to stay unambiguous
    with pytest.raises(ValueError):
        field.encode(np.array([np.nan]), 20, rng)


def test_shamir_needs_the_threshold():
    secret = bytes(range(32))
    shares = shamir.split(secret, 5, 3)
    assert shamir.combine({1: shares[0], 4: shares[3], 5: shares[4]}) == secret
    assert shamir.combine({x + 1: y for x, y in enumerate(shares)}) == secret
    with pytest.raises(ValueError):
        shamir.combine({1: shares[0], 2: shares[1]})  # two of a 3-of-5 sharing: a random 521-bit number


def test_masks_cancel_and_dropouts_are_unmasked():
    rng = np.random.default_rng(1)
    ids = ["n1", "n2", "n3", "n4"]
    keys = {i: crypto.new_keypair() for i in ids}
    public = {i: keys[i][1] for i in ids}
    ctx = masks.context("fed", "home", 3, 7, 2)
    xs = {i: rng.normal(size=6) for i in ids}
    seeds = {i: bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for i in ids}
    ys = {i: masks.mask(field.encode(xs[i], 20, rng), i, seeds[i], keys[i][0], public, ctx) for i in ids}
    assert not np.allclose(field.decode(ys["n1"], 20), xs["n1"], atol=1)  # a masked input reveals nothing useful
    survivors = ["n1", "n2", "n4"]  # n3 shared its keys, then dropped out
    total = np.zeros(6, np.int64)
    for u in survivors:
        total = field.add(total, ys[u])
    out = masks.unmask(total, {u: seeds[u] for u in survivors}, {"n3": keys["n3"][0]}, survivors, public, ctx)
    assert np.allclose(field.decode(out, 20), sum(xs[u] for u in survivors), atol=1e-5)


def test_share_sealing_is_bound_to_its_pair():
    a, b, c = crypto.new_keypair(), crypto.new_keypair(), crypto.new_keypair()
    key = crypto.agree(a[0], b[1], b"ctx")
    assert key == crypto.agree(b[0], a[1], b"ctx")
    sealed = crypto.seal(key, b"share", b"a>b")
    assert crypto.open_sealed(key, sealed, b"a>b") == b"share"
    with pytest.raises(ValueError):
        crypto.open_sealed(crypto.agree(c[0], a[1], b"ctx"), sealed, b"a>b")
    with pytest.raises(ValueError):
        crypto.open_sealed(key, sealed, b"a>c")


@pytest.mark.parametrize("payload", [
    b'{"v":1,"type":"keys","round":1,"attempt":1,"model_version":0,"c_pk":"AA==","s_pk":"AA=="}',
    b'{"v":1,"type":"roster","round":1,"attempt":1,"model_version":0,"threshold":5,"nodes":{}}',
    b'{"v":1,"type":"unmask","round":1,"attempt":1,"model_version":0,"b":{"n1":"zz"},"s":{}}',
    b'{"v":1,"type":"survivors","round":1,"attempt":1,"model_version":0,"nodes":["a","a"]}',
    b'{"v":1,"type":"shares","round":1,"attempt":1,"model_version":0,"shares":{"_x":"AA=="}}',
    b'{"v":1,"type":"launch","round":1,"attempt":1,"model_version":0}',
])
def test_malformed_secure_aggregation_messages_are_refused(payload):
    with pytest.raises(MessageError):
        SecAggMessage.decode(payload, ("keys", "roster", "unmask", "survivors", "shares"))


def test_messages_round_trip():
    c, s = crypto.new_keypair()[1], crypto.new_keypair()[1]
    roster = SecAggMessage("roster", 1, 2, 3, keys={"a": (c, s), "b": (s, c)}, threshold=2)
    back = SecAggMessage.decode(roster.encode(), ("roster",))
    assert back.keys == roster.keys and back.threshold == 2 and back.session == (1, 2, 3)
    unmask = SecAggMessage("unmask", 1, 2, 3, b_shares={"a": 5}, s_shares={"b": shamir.Q - 1})
    assert SecAggMessage.decode(unmask.encode(), ("unmask",)).s_shares == {"b": shamir.Q - 1}
