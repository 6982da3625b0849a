"""Talking to OCI registries: references, auth, manifests, blobs, ranges, uploads.

The client half lives in :mod:`.client` (``RegistryClient``), :mod:`.fetcher`
(``RangeFetcher``), :mod:`.ranges` (pure range planning and the multipart parser),
:mod:`.auth`, :mod:`.reference` and :mod:`.transfer` (pull/push whole images);
``docs/registry-client.md`` has the rules.  Import from those modules directly.
"""
