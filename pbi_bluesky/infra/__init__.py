"""The infrastructure kit every room shares, on the libraries first.

Free ports on loopback (:mod:`~pbi_bluesky.infra.ports`) and the one retry policy, stamina
with tiled's ``should_retry`` (:mod:`~pbi_bluesky.infra.retry`).
"""
