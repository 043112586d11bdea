"""Contracts: what crosses a boundary, and nothing else.

The lowest layer of potluck. Every other layer may import it; it imports none of them.

- ``errors``      the whole exception tree (``PotluckError`` and its HTTP status mapping)
- ``jobspec``     the job specification in typed sections, and the replica process's spec
- ``events``      typed, versioned training events (step, allocation, membership, done)
- ``wire``        the HTTP API's request and response messages
- ``client``      the one HTTP client of the coordinator API
- ``versions``    which versions must match across the cluster, and the mismatch message
- ``addressing``  ``host:port`` and URLs with IPv6 brackets
"""
