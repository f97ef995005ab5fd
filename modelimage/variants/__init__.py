"""Variants: one model at several precisions (F16, Q8_0, Q4_K_M, ...) under
one reference, as an OCI image index with one manifest per variant.

* :mod:`.spec` describes them (``[models.NAME.variants.VARIANT]`` tables in
  modelimage.toml, ``--variant NAME=GLOB`` on the command line) and splits
  the model's files among them (which files each holds, which are shared);
* :mod:`.select` is what an index entry carries (annotations) and the rule
  that picks one (by name, by GPU memory, or the default first entry);
* :mod:`.layers` keeps files that several variants share in identical
  layers, so they are stored and pushed once;
* :mod:`.build` builds every variant and writes (or pushes) the index and a
  tag per variant;
* :mod:`.resolve` reads an index back (registry or layout) for ``pull``,
  ``inspect``, ``estimate`` and ``render``.
"""
