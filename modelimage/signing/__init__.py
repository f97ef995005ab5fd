"""Signing, attesting and checking model images (issue 18).

* :mod:`.oms` -- OpenSSF Model Signing statements signed and checked with
  the ``model-signing`` package (the only module that imports it);
* :mod:`.files` -- an image's model files with the sha256 recorded at build
  time (never the weights);
* :mod:`.provenance` -- SLSA v1 build provenance (pure);
* :mod:`.referrer` -- signatures and attestations as OCI 1.1 artifacts;
* :mod:`.remote` -- an image opened by manifest, config and referrers only;
* :mod:`.sign`, :mod:`.verify` -- the flows behind ``modelimage sign``,
  ``build --sign``, ``verify --key`` and ``pull --require-signature``.

Needs the optional ``sign`` extra: ``pip install 'modelimage[sign]'``.
"""
