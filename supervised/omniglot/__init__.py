"""N-way K-shot Omniglot (Lake et al., 2015): ``metaopt train omniglot``.

* `supervised.omniglot.data`: the folder's layout, reading, splitting and sampling episodes,
  downloading the official zips, a synthetic fixture (``python -m supervised.omniglot``);
* `supervised.omniglot.family`: ``metaopt train omniglot``.
"""
