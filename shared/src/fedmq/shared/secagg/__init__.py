"""Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning"), shared by nodes and aggregators: the finite field and fixed-point encoding (``field``), Shamir
secret sharing (``shamir``), key agreement, mask expansion and share encryption (``crypto``) and the JSON
messages of the protocol (``messages``). docs/protocol.md, section 9, is the specification.
"""
